package boot

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot/boottest"
)

func TestKernelRelease(t *testing.T) {
	dir := t.TempDir()
	k := boottest.FakeKernel(t, dir, "6.1.0-56-cloud-amd64", 4096)
	f, _ := os.Open(k)
	defer f.Close()
	if rel, err := KernelRelease(f); err != nil || rel != "6.1.0-56-cloud-amd64" {
		t.Errorf("KernelRelease = %q, %v", rel, err)
	}
	if _, err := KernelRelease(strings.NewReader(strings.Repeat("x", 8192))); !errors.Is(err, ErrNotKernel) {
		t.Errorf("KernelRelease of junk = %v, want ErrNotKernel", err)
	}
	if _, err := KernelRelease(strings.NewReader("short")); !errors.Is(err, ErrNotKernel) {
		t.Errorf("KernelRelease of 5 bytes = %v, want ErrNotKernel", err)
	}
}
