// Package images tests the container images: the Dockerfiles are built by
// labs/images/build.sh (what `make images` runs) and what they hold is run.
package images

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/labs/labtest"
)

// builder runs buildah with its own storage (a temporary graph root), so
// that the stand-in base images below never mix with a machine's own.
type builder struct {
	t   *testing.T
	env []string
}

func (b *builder) run(args ...string) string {
	b.t.Helper()
	out, err := b.try(args...)
	if err != nil {
		b.t.Fatalf("buildah %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

func (b *builder) try(args ...string) (string, error) {
	cmd := exec.Command("buildah", args...)
	cmd.Env = b.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// inImage runs a shell command in a container of image and returns its
// output.
func (b *builder) inImage(image, script string) string {
	b.t.Helper()
	c := b.run("from", "--pull-never", "-q", image)
	defer b.try("rm", c)
	return b.run("run", c, "--", "sh", "-c", script)
}

// TestLabImages builds the anycastd image and the lab images with the
// repository's Dockerfiles, unchanged, through labs/images/build.sh (make
// images) with buildah, and runs what they hold. These machines reach no
// container registry, so the two base images are stood in for, under their
// own names, by images built here: debian:bookworm-slim from Debian's
// packages (mmdebstrap, minbase) and golang:1.26-bookworm from that plus
// the Go toolchain running this test (and the host's extra CA
// certificates, for networks that intercept TLS).
func TestLabImages(t *testing.T) {
	labtest.Require(t)
	for _, tool := range []string{"buildah", "mmdebstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (labs/install-deps.sh installs it)", tool)
		}
	}
	root := labtest.RepoRoot()
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^FROM golang:([0-9]+\.[0-9]+)-bookworm `).FindSubmatch(dockerfile)
	if m == nil {
		t.Fatal("Dockerfile: no FROM golang:X.Y-bookworm line")
	}
	goTag := string(m[1])
	if v := runtime.Version(); !strings.HasPrefix(v, "go"+goTag+".") && v != "go"+goTag {
		t.Fatalf("the Dockerfile builds with Go %s, this test runs %s: the stand-in golang image would lie", goTag, v)
	}

	dir, err := os.MkdirTemp("", "anycastd-images-")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "storage.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(dir, "graph"), filepath.Join(dir, "run"))), 0o644)
	b := &builder{t: t, env: append(os.Environ(), "CONTAINERS_STORAGE_CONF="+conf, "BUILDAH_ISOLATION=chroot")}
	t.Cleanup(func() {
		b.try("rm", "--all")
		b.try("rmi", "--all", "--force")
		// buildah's overlay mounts, if a step died with one up.
		exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
		os.RemoveAll(dir)
	})

	// debian:bookworm-slim, from Debian's packages.
	tarball := filepath.Join(dir, "bookworm.tar")
	if out, err := exec.Command("mmdebstrap", "--quiet", "--variant=minbase", "bookworm", tarball,
		"http://deb.debian.org/debian").CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
	c := b.run("from", "scratch")
	b.run("add", c, tarball, "/")
	b.run("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "bash", c)
	b.run("commit", "-q", "--rm", c, "docker.io/library/debian:bookworm-slim")
	os.Remove(tarball)

	// golang:X.Y-bookworm: the base plus this test's Go toolchain, git and
	// CA certificates, as the official image has.
	c = b.run("from", "--pull-never", "docker.io/library/debian:bookworm-slim")
	b.run("copy", c, runtime.GOROOT(), "/usr/local/go")
	if extra, _ := filepath.Glob("/usr/local/share/ca-certificates/*"); len(extra) > 0 {
		b.run("copy", c, "/usr/local/share/ca-certificates/", "/usr/local/share/ca-certificates/")
	}
	b.run("run", "--network", "host", c, "--", "sh", "-c",
		"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates git >/dev/null && rm -rf /var/lib/apt/lists/* && update-ca-certificates >/dev/null")
	b.run("config", "--env", "PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--env", "GOPATH=/go", "--env", "GOTOOLCHAIN=local", "--workingdir", "/go", c)
	b.run("commit", "-q", "--rm", c, "docker.io/library/golang:"+goTag+"-bookworm")

	// make images, with buildah.
	cmd := exec.Command("bash", "labs/images/build.sh", "--pull-never", "--network", "host")
	cmd.Dir = root
	cmd.Env = append(b.env, "BUILDER=buildah", "VERSION=images-test")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("labs/images/build.sh: %v\n%s", err, out)
	}

	// What the images hold.
	images := b.run("images", "--format", "{{.Name}}:{{.Tag}}")
	for _, img := range []string{"anycastd", "lab-director", "lab-host", "lab-router"} {
		if !strings.Contains(images, "ghcr.io/anycastd/"+img+":latest") {
			t.Errorf("image %s not built; images:\n%s", img, images)
		}
	}
	check := func(image, script string, want ...string) {
		t.Helper()
		out := b.inImage(image, script)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: %q: output lacks %q:\n%s", image, script, w, out)
			}
		}
	}
	check("ghcr.io/anycastd/anycastd:latest",
		"anycastd --version; anyctl version; for c in ipvsadm ip nft dig sysctl; do command -v $c; done; echo ANYCTL_SOCKET=$ANYCTL_SOCKET",
		"anycastd version images-test", "anyctl images-test", "/usr/sbin/ipvsadm", "/usr/sbin/ip", "/usr/sbin/nft", "/usr/bin/dig", "/usr/sbin/sysctl", "ANYCTL_SOCKET=/run/anycastd/anycastd.sock")
	// The daemon checks a config inside the image.
	c = b.run("from", "--pull-never", "-q", "ghcr.io/anycastd/anycastd:latest")
	b.run("copy", c, filepath.Join(root, "configs/examples/ecmp.yaml"), "/etc/anycastd/anycastd.yaml")
	if out := b.run("run", c, "--", "anycastd", "--check-config", "-c", "/etc/anycastd/anycastd.yaml"); !strings.HasPrefix(out, "ok ") {
		t.Errorf("anycastd --check-config in the image: %s", out)
	}
	b.run("rm", c)
	inspect := b.run("inspect", "--type", "image", "--format", "{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}", "ghcr.io/anycastd/anycastd:latest")
	if inspect != "[/usr/local/sbin/anycastd] [-c /etc/anycastd/anycastd.yaml]" {
		t.Errorf("anycastd image: entrypoint and cmd %s", inspect)
	}
	inspect = b.run("inspect", "--type", "image", "--format", "{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}", "ghcr.io/anycastd/lab-director:latest")
	if inspect != "[] [sleep infinity]" {
		t.Errorf("lab-director image: entrypoint and cmd %s, want an idle main process", inspect)
	}
	check("ghcr.io/anycastd/lab-director:latest", "anycastd --version; bird --version 2>&1", "anycastd version images-test", "BIRD version 2")
	check("ghcr.io/anycastd/lab-host:latest", "anyctl version; nginx -v 2>&1; curl --version | head -1; for c in dig sysctl ping; do command -v $c; done",
		"anyctl images-test", "nginx version", "curl ", "/usr/bin/dig", "/usr/sbin/sysctl")
	check("ghcr.io/anycastd/lab-router:latest", "bird --version 2>&1; /usr/lib/frr/bgpd -v | head -1; for c in sysctl ip nft vtysh; do command -v $c; done",
		"BIRD version 2", "bgpd version 8", "/usr/sbin/sysctl", "/usr/bin/vtysh")
}
