package main

import (
	"testing"

	"github.com/stagehand-dev/stagehand/internal/imports"
)

// TestDeps keeps the pre-stage init small and its attack surface narrow:
// nothing that talks to registries, parses command lines for humans, or
// draws progress bars belongs in PID 1 of the initramfs.
func TestDeps(t *testing.T) {
	imports.Forbid(t, "prestage",
		"github.com/google/go-containerregistry",
		"github.com/spf13/cobra",
		"github.com/schollz/progressbar",
		"net/http",
		"github.com/stagehand-dev/stagehand/stage",
		"github.com/stagehand-dev/stagehand/installer",
		// The archive writer and ELF reader are the builder's (prestage
		// needs only initramfs/kmod): every package linked in is init work
		// at each boot.
		"github.com/stagehand-dev/stagehand/initramfs$",
		"github.com/u-root/u-root/pkg/cpio",
		"debug/elf",
		"debug/pe",
		"debug/dwarf",
		// Fleets: the Kubernetes and etcd clients are stagehand-agent's alone.
		"github.com/stagehand-dev/stagehand/fleet",
		"k8s.io",
		"go.etcd.io",
		"google.golang.org/grpc",
	)
}
