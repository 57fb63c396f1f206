//go:build vm

package qemutests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/stage"
)

// TestDeltaBudgets measures what a delta staging fetches on images the
// project builds (`stager image build` over the test OS's slot initramfs
// and the Debian kernels), from a node whose slot a holds v1 (cloud
// kernel): `stager --image oci:… --dry-run --json`, which plans from the
// disk's own slot files exactly as staging does (stage's TestPlan checks
// the two agree). Budgets of issue 29: a patch with the same kernel
// fetches at most 15% of the image, a kernel bump at most 60%; an
// unrelated image is pulled whole, none of its chunks being on the node. No VM boots: it runs with the
// VM tests because it needs their kernels and initramfs builds.
func TestDeltaBudgets(t *testing.T) {
	cloud, generic := kernel(t, "cloud"), kernel(t, "generic")
	img := filepath.Join(t.TempDir(), "disk.img")
	if _, err := bootdisk.Init(context.Background(), img, bootdisk.Config{
		Layout: testLayout(), Kernel: cloud.Vmlinuz, Initramfs: slotInitramfs(t, "cloud", "v1"), Cmdline: slotCmdline, Version: "v1",
	}); err != nil {
		t.Fatal(err)
	}
	unrelated := filepath.Join(t.TempDir(), "unrelated")
	st, err := os.Stat(slotInitramfs(t, "generic", "v2"))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, st.Size())
	rand.Read(b)
	if err := os.WriteFile(unrelated, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name              string
		kernel, initramfs string
		budget            float64 // the most of the image fetched
		least             float64 // the least (an unrelated image)
	}{
		{"patch: same kernel, v2's initramfs", cloud.Vmlinuz, slotInitramfs(t, "cloud", "v2"), 0.15, 0},
		{"kernel bump: generic kernel and its modules", generic.Vmlinuz, slotInitramfs(t, "generic", "v2"), 0.60, 0},
		{"unrelated image", generic.Vmlinuz, unrelated, 1, 0.75},
	} {
		t.Run(c.name, func(t *testing.T) {
			layout := "oci:" + filepath.Join(t.TempDir(), "images") + ":v2"
			hostStager(t, "image", "build", "--kernel", c.kernel, "--initramfs", c.initramfs, "--cmdline", slotCmdline, "--version", "v2", "--output", layout)
			before := disktest.Sum(t, img)
			var p stage.Preview
			cmd := exec.Command(buildStatic(t, "./cmd/stager"), "--image", layout, "--disk", img, "--dry-run", "--json")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("stager --dry-run: %v\n%s", err, stderr.Bytes())
			}
			if err := json.Unmarshal(out, &p); err != nil {
				t.Fatalf("stager --dry-run --json: %v\n%s", err, out)
			}
			if disktest.Sum(t, img) != before {
				t.Error("--dry-run changed the disk")
			}
			frac := float64(p.Fetch) / float64(p.Total)
			t.Logf("fetch %d of %d bytes (%.1f%%) in %d ranges; from the machine: %+v", p.Fetch, p.Total, 100*frac, p.Ranges, p.Seeds)
			if (p.Full != "") != (c.least > 0) || frac > c.budget || frac < c.least {
				t.Errorf("fetches %.1f%% of the image (full: %q), want between %.0f%% and %.0f%%", 100*frac, p.Full, 100*c.least, 100*c.budget)
			}
		})
	}
}
