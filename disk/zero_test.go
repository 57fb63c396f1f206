package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stagehand-dev/stagehand/disk/disktest"
)

// TestZero zeroes ranges of STAGE that start or end inside a sector, as
// stage.Clear and stage.Cancel do (a payload ends where its last artifact
// does), on an image file and on a loop device, and checks that exactly
// those bytes read as zeros. BLKZEROOUT takes whole sectors only: on a
// block device an unaligned range failed with EINVAL (seen in the VM tests,
// where `stager confirm` could not clear the applied payload).
func TestZero(t *testing.T) {
	ranges := []struct{ off, n int64 }{
		{100, 3*4096 + 7},   // unaligned at both ends
		{64 << 10, 8192},    // aligned
		{200 << 10, 2},      // inside one sector
		{300 << 10, 5000},   // aligned start, unaligned end
		{400<<10 + 1, 1023}, // unaligned start, aligned end
	}
	for _, dev := range []string{"image", "loop"} {
		t.Run(dev, func(t *testing.T) {
			img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
			path := img
			if dev == "loop" {
				path = disktest.Loop(t, img)
			}
			d, err := Open(path, true)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			r, err := d.Find(LabelSTAGE)
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Repeat([]byte{0xa5}, 512<<10)
			if _, err := r.WriteAt(want, 0); err != nil {
				t.Fatal(err)
			}
			for _, rg := range ranges {
				if err := r.Zero(rg.off, rg.n); err != nil {
					t.Fatalf("Zero(%d, %d): %v", rg.off, rg.n, err)
				}
				clear(want[rg.off : rg.off+rg.n])
			}
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if _, err := r.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("through %s: byte %d of STAGE is %#x, want %#x", path, i, got[i], want[i])
			}
			raw, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(raw[r.Offset:r.Offset+int64(len(want))], want); i >= 0 {
				t.Fatalf("in the image file: byte %d of STAGE is %#x, want %#x", i, raw[r.Offset+int64(i)], want[i])
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
