package main

import (
	"os/exec"
	"strings"
	"testing"
)

// anyctl is a client: it talks to the daemon through package api and must
// not link the daemon's routing speaker, gossip or control loop.
func TestAnyctlDoesNotLinkTheDaemon(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain on PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"github.com/osrg/gobgp", "github.com/hashicorp/memberlist",
			"github.com/anycastd/anycastd/director", "github.com/anycastd/anycastd/cluster", "github.com/anycastd/anycastd/routing"} {
			if dep == bad || strings.HasPrefix(dep, bad+"/") {
				t.Errorf("anyctl links %s", dep)
			}
		}
	}
}
