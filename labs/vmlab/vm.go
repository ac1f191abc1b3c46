// Package vmlab boots Debian's own kernel under qemu (software emulation:
// these machines have no KVM and their kernel has no IPVS) with a minimal
// initramfs, runs the project's test binaries inside it against the real
// IPVS, and hands their output and exit codes back to the host's go test.
//
// The kernel package is downloaded once with apt-get download and cached in
// labs/.cache (git-ignored). One boot runs every test binary given.
package vmlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Modules are loaded in this order inside the VM (modprobe pulls in what
// each depends on). crc32c_generic goes first: libcrc32c needs the crc32c
// algorithm registered before it loads.
var Modules = []string{
	"crc32c_generic",
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_mh", "ip_vs_sed", "ip_vs_nq",
	"veth", "bridge", "ipip", "nf_tables",
}

// moduleDirs are the parts of the module tree copied into the initramfs;
// depmod inside the VM works out the dependencies among them.
var moduleDirs = []string{
	"kernel/crypto/crc32c_generic.ko",
	"kernel/lib/libcrc32c.ko",
	"kernel/net/netfilter/nf_conntrack.ko",
	"kernel/net/netfilter/ipvs",
	"kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko",
	"kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko",
	"kernel/drivers/net/veth.ko",
	"kernel/net/bridge/bridge.ko",
	"kernel/net/802/stp.ko",
	"kernel/net/llc/llc.ko",
	"kernel/net/ipv4/ipip.ko",
	"kernel/net/ipv4/ip_tunnel.ko",
	"kernel/net/ipv4/tunnel4.ko",
	// nft in namespaces (the soak lab's blackhole): nf_tables and what it
	// needs beside libcrc32c.
	"kernel/net/netfilter/nf_tables.ko",
	"kernel/net/netfilter/nfnetlink.ko",
}

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	Package string // linux-image-6.1.0-NN-amd64
	Version string // 6.1.0-NN-amd64
	Vmlinuz string
	Modules string // .../lib/modules/VERSION
}

// CacheDir is where downloads and builds are kept between runs.
func CacheDir(repoRoot string) string { return filepath.Join(repoRoot, "labs", ".cache") }

// EnsureKernel returns Debian's current kernel (the package
// linux-image-amd64 depends on), downloading and unpacking it into cache if
// it is not there yet.
func EnsureKernel(ctx context.Context, cache string) (*Kernel, error) {
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "kernel", pkg)
	if k, err := findKernel(pkg, dir); err == nil {
		return k, nil
	}
	dl := filepath.Join(cache, "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) == 0 {
		return nil, fmt.Errorf("apt-get download %s left no .deb in %s", pkg, dl)
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg -x %s: %v\n%s", debs[0], err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	os.Remove(debs[0])
	return findKernel(pkg, dir)
}

var dependsRE = regexp.MustCompile(`Depends:\s+(linux-image-[0-9][^\s]*)`)

func kernelPackage(ctx context.Context) (string, error) {
	try := func() (string, error) {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("apt-cache depends linux-image-amd64: %v\n%s", err, out)
		}
		m := dependsRE.FindSubmatch(out)
		if m == nil {
			return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no kernel:\n%s", out)
		}
		return string(m[1]), nil
	}
	pkg, err := try()
	if err == nil {
		return pkg, nil
	}
	// A fresh machine may have no package lists yet.
	if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
		return "", fmt.Errorf("%v; apt-get update: %v\n%s", err, uerr, out)
	}
	return try()
}

func findKernel(pkg, dir string) (*Kernel, error) {
	vm, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(vm) != 1 || len(mods) != 1 {
		return nil, fmt.Errorf("no unpacked kernel in %s", dir)
	}
	return &Kernel{Package: pkg, Version: filepath.Base(mods[0]), Vmlinuz: vm[0], Modules: mods[0]}, nil
}

// Test is one test binary to run inside the VM.
type Test struct {
	// Name identifies the test in the result; the binary is /tests/NAME.
	Name string
	// Binary is the host path of a static test binary (go test -c with
	// CGO_ENABLED=0).
	Binary string
	// Args are passed to it, e.g. -test.run ^TestVM -test.v.
	Args []string
}

// Spec is one boot of the VM.
type Spec struct {
	Kernel *Kernel
	// Files are copied into the initramfs: VM path -> host path
	// (e.g. /bin/anyctl).
	Files map[string]string
	// HostBinaries are dynamically linked programs of the host (Debian's
	// BIRD, say), copied to the same path in the initramfs with the
	// libraries ldd names.
	HostBinaries []string
	Tests        []Test
	// Env is set for every test binary.
	Env map[string]string
	// Memory in MiB (default 1024) and CPUs (default 2).
	Memory, CPUs int
	// WorkDir holds the initramfs build; a temporary directory if empty.
	WorkDir string
}

// TestResult is what one test binary did.
type TestResult struct {
	Name   string
	Exit   int // -1: it did not finish
	Output string
}

// Result is what a boot produced.
type Result struct {
	Tests    []TestResult
	Console  string
	Boot     time.Duration // qemu start to /init
	Duration time.Duration
}

// Run builds the initramfs and boots it, and returns when the VM powers
// off or ctx ends (then qemu is killed).
func Run(ctx context.Context, spec Spec) (*Result, error) {
	if spec.Kernel == nil {
		return nil, errors.New("vmlab: no kernel")
	}
	work := spec.WorkDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "vmlab-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(work)
	}
	initrd, err := buildInitramfs(ctx, work, spec)
	if err != nil {
		return nil, err
	}
	mem, cpus := spec.Memory, spec.CPUs
	if mem == 0 {
		mem = 1024
	}
	if cpus == 0 {
		cpus = 2
	}
	args := []string{
		"-nographic", "-no-reboot", "-nic", "none",
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus), "-cpu", "max",
		"-kernel", spec.Kernel.Vmlinuz, "-initrd", initrd,
		// A soft lockup panics (and -no-reboot ends qemu) at once with
		// its stack traces on the console (loglevel 5 lets warning-level
		// traces through), instead of hanging until the test's deadline.
		"-append", "console=ttyS0 loglevel=5 panic=-1 softlockup_panic=1 softlockup_all_cpu_backtrace=1 random.trust_cpu=on",
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	var console bytes.Buffer
	cmd.Stdout = &console
	cmd.Stderr = &console
	cmd.Stdin = nil
	start := time.Now()
	runErr := cmd.Run()
	res := parseConsole(strings.ReplaceAll(console.String(), "\r", ""), spec.Tests)
	res.Duration = time.Since(start)
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM run did not finish: %w", ctx.Err())
	}
	if runErr != nil {
		return res, fmt.Errorf("qemu: %w", runErr)
	}
	return res, nil
}

const (
	markBooted = "@@VMLAB BOOTED"
	markBegin  = "@@VMLAB BEGIN "
	markEnd    = "@@VMLAB END "
)

func parseConsole(console string, tests []Test) *Result {
	res := &Result{Console: console}
	byName := map[string]*TestResult{}
	for _, t := range tests {
		res.Tests = append(res.Tests, TestResult{Name: t.Name, Exit: -1})
	}
	for i := range res.Tests {
		byName[res.Tests[i].Name] = &res.Tests[i]
	}
	var cur *TestResult
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// Kernel messages can land on the same console line as ours:
		// find markers anywhere in a line.
		after := func(mark string) (string, bool) {
			if i := strings.Index(line, mark); i >= 0 {
				return strings.TrimSpace(line[i+len(mark):]), true
			}
			return "", false
		}
		if v, ok := after(markBooted); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if sec, err := strconv.ParseFloat(f[0], 64); err == nil {
					res.Boot = time.Duration(sec * float64(time.Second))
				}
			}
			continue
		}
		if v, ok := after(markBegin); ok {
			cur = byName[v]
			out.Reset()
			continue
		}
		if v, ok := after(markEnd); ok && cur != nil {
			f := strings.Fields(v)
			if len(f) == 2 && f[0] == cur.Name {
				cur.Exit, _ = strconv.Atoi(f[1])
			}
			cur.Output = out.String()
			cur = nil
			continue
		}
		if cur != nil {
			out.WriteString(line)
			out.WriteByte('\n')
		}
	}
	if cur != nil {
		cur.Output = out.String() // cut off: Exit stays -1
	}
	return res
}

func buildInitramfs(ctx context.Context, work string, spec Spec) (string, error) {
	root := filepath.Join(work, "root")
	os.RemoveAll(root)
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "run", "tmp", "tests", "etc", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil || !isStatic(bb) {
		bb = "/bin/busybox"
		if !isStatic(bb) {
			return "", errors.New("vmlab: a static busybox is needed (apt-get install busybox-static)")
		}
	}
	copies := map[string]string{"/bin/busybox": bb}
	// iproute2's ip and the libraries it links (busybox ip cannot make
	// veth pairs or namespaces).
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		return "", errors.New("vmlab: iproute2's ip is needed on the host")
	}
	copies["/sbin/ip"] = ipPath
	libs, err := sharedLibs(ctx, ipPath)
	if err != nil {
		return "", err
	}
	for _, l := range libs {
		copies[l] = l
	}
	for dst, src := range spec.Files {
		copies[dst] = src
	}
	for _, b := range spec.HostBinaries {
		libs, err := sharedLibs(ctx, b)
		if err != nil {
			return "", err
		}
		copies[b] = b
		for _, l := range libs {
			copies[l] = l
		}
	}
	for _, t := range spec.Tests {
		copies["/tests/"+t.Name] = t.Binary
	}
	for dst, src := range copies {
		if err := copyFile(src, filepath.Join(root, dst)); err != nil {
			return "", err
		}
	}
	modRoot := filepath.Join(root, "lib", "modules", spec.Kernel.Version)
	for _, m := range moduleDirs {
		if err := copyTree(filepath.Join(spec.Kernel.Modules, m), filepath.Join(modRoot, m)); err != nil {
			return "", fmt.Errorf("module %s: %w", m, err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript(spec)), 0o755); err != nil {
		return "", err
	}
	os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)

	// busybox cpio: Debian has no cpio command by default.
	initrd := filepath.Join(work, "initrd.cpio")
	var list bytes.Buffer
	var files []string
	filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	for _, f := range files {
		list.WriteString(f + "\n")
	}
	out, err := os.Create(initrd)
	if err != nil {
		return "", err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, bb, "cpio", "-o", "-H", "newc")
	cmd.Dir = root
	cmd.Stdin = &list
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cpio: %v\n%s", err, stderr.String())
	}
	return initrd, nil
}

func initScript(spec Spec) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
ip link set lo up
# The kernel starts init with 1,024 open files (4,096 at most): a test
# that holds thousands of connections needs more.
ulimit -n 65536
depmod
`)
	for _, m := range Modules {
		fmt.Fprintf(&b, "modprobe %s || echo 'vmlab: modprobe %s failed'\n", m, m)
	}
	fmt.Fprintf(&b, "echo %q$(cut -d' ' -f1 /proc/uptime)\n", markBooted+" ")
	var env []string
	for k, v := range spec.Env {
		env = append(env, k+"="+shellQuote(v))
	}
	sort.Strings(env)
	for _, t := range spec.Tests {
		var args []string
		for _, a := range t.Args {
			args = append(args, shellQuote(a))
		}
		fmt.Fprintf(&b, "echo %s\ncd /tmp\nenv ANYCASTD_VM=1 %s /tests/%s %s 2>&1\necho %s $?\n",
			shellQuote(markBegin+t.Name), strings.Join(env, " "), t.Name, strings.Join(args, " "), shellQuote(markEnd+t.Name))
	}
	b.WriteString("sync\npoweroff -f\n")
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func isStatic(path string) bool {
	out, err := exec.Command("file", "-L", path).Output()
	if err != nil {
		// No file(1): trust a busybox that ldd calls not dynamic.
		out, _ = exec.Command("ldd", path).CombinedOutput()
		return bytes.Contains(out, []byte("not a dynamic executable"))
	}
	return bytes.Contains(out, []byte("statically linked")) || bytes.Contains(out, []byte("static-pie"))
}

var lddRE = regexp.MustCompile(`(?m)(/[^\s]+)\s+\(0x`)

func sharedLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	var libs []string
	for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	return libs, nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, st.Mode().Perm()|0o400)
}

func copyTree(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return copyFile(src, dst)
	}
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return copyFile(p, filepath.Join(dst, rel))
	})
}

// kernelTrouble marks the console lines that start a kernel report worth
// reading in full: a soft lockup or an oops leaves a stack trace after
// it, which the console's tail has long scrolled past.
var kernelTrouble = []string{"BUG:", "Oops", "Kernel panic", "WARNING:", "rcu: INFO:", "INFO: task", "Call Trace:"}

// ConsoleReport is what a failed VM run should show: the first kernel
// report (from its first line, up to n lines of it) when the kernel
// printed one, then the console's last n lines.
func (r *Result) ConsoleReport(n int) string {
	if r == nil {
		return ""
	}
	lines := strings.Split(r.Console, "\n")
	var b strings.Builder
	for i, l := range lines {
		if !slices.ContainsFunc(kernelTrouble, func(m string) bool { return strings.Contains(l, m) }) {
			continue
		}
		end := min(i+n, len(lines))
		fmt.Fprintf(&b, "first kernel report (console lines %d-%d of %d):\n%s\n", i+1, end, len(lines), strings.Join(lines[i:end], "\n"))
		if end >= len(lines) {
			return b.String()
		}
		break
	}
	start := max(len(lines)-n, 0)
	fmt.Fprintf(&b, "console tail:\n%s", strings.Join(lines[start:], "\n"))
	return b.String()
}
