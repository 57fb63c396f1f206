package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stagehand-dev/stagehand/internal/gobuild"
)

// sizeBudget is the node stager's size budget, stripped (issue 27): every
// slot carries the binary and every confirm, check and status at boot
// loads it. Measured 2026-12-07 for linux/amd64 with go1.26.8: 56,823,970
// bytes at fa96834, with the Kubernetes agent linked, and 9,998,498 bytes
// (9.54 MiB) once it moved to stagehand-agent; the budget is 10% above.
const sizeBudget = 21 << 19 // 10.5 MiB

// TestSize builds stager as `make build` does (static, stripped) for
// linux/amd64 and checks its size. What it links is TestDeps's.
func TestSize(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stager")
	if err := gobuild.Static(".", "amd64", bin, "."); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stager, stripped: %d bytes (%.2f MiB), budget %.2f MiB", st.Size(), float64(st.Size())/(1<<20), float64(sizeBudget)/(1<<20))
	if st.Size() > sizeBudget {
		t.Errorf("stager, stripped: %d bytes, over its budget of %d (10.5 MiB)", st.Size(), sizeBudget)
	}
}
