package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the Kubernetes agent out of stager: client-go's and
// kubectl's schemes cost every stager confirm, check and status at every
// boot tens of MiB and their package init, and every slot the binary's
// size. They are stagehand-agent's alone.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, banned := range []string{
		"k8s.io",
		"sigs.k8s.io",
		"go.etcd.io",
		"google.golang.org/grpc",
		"github.com/stagehand-dev/stagehand/fleet",
	} {
		for _, dep := range strings.Fields(string(out)) {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("stager imports %s", dep)
			}
		}
	}
}
