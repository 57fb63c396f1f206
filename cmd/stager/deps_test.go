package main

import (
	"testing"

	"github.com/stagehand-dev/stagehand/internal/imports"
)

// TestDeps keeps the Kubernetes agent out of stager: client-go's and
// kubectl's schemes cost every stager confirm, check and status at every
// boot tens of MiB and their package init, and every slot the binary's
// size. They are stagehand-agent's alone.
func TestDeps(t *testing.T) {
	imports.Forbid(t, "stager",
		"k8s.io",
		"sigs.k8s.io",
		"go.etcd.io",
		"google.golang.org/grpc",
		"github.com/stagehand-dev/stagehand/fleet",
	)
}
