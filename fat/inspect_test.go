package fat

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mkfsFAT makes a volume of size bytes with mkfs.fat args.
func mkfsFAT(t *testing.T, size int64, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "vol.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, size)
	if out, err := exec.Command("mkfs.fat", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.fat: %v: %s (dosfstools)", err, out)
	}
	return img
}

// TestView: a FAT32 mkfs.fat made, read without a byte written, its
// damage repaired in memory only.
func TestView(t *testing.T) {
	img := mkfsFAT(t, 300<<20, "-F", "32")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	esp, err := Open(f, 300<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := esp.WriteFile("EFI/debian/grubx64.efi", bytes.NewReader(bytes.Repeat([]byte("g"), 1<<20))); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	// The second FAT copy loses the file's clusters, as a cut between
	// the copies' writes would leave it.
	bs := make([]byte, 512)
	f.ReadAt(bs, 0)
	g, err := parseGeometry(bs)
	if err != nil {
		t.Fatal(err)
	}
	fat1 := make([]byte, g.fatBytes())
	f.ReadAt(fat1, g.fatOffset(0))
	f.WriteAt(make([]byte, 4096), g.fatOffset(1)+8)
	before, _ := os.ReadFile(img)

	vol, u, err := View(f, 300<<20)
	if err != nil {
		t.Fatal(err)
	}
	if u.ClusterSize != 4096 || u.Free <= 290<<20 || u.Free > u.Total || u.Total > 300<<20 {
		t.Errorf("usage %+v", u)
	}
	if b, err := vol.ReadFile("EFI/debian/grubx64.efi"); err != nil || len(b) != 1<<20 {
		t.Errorf("ReadFile = %d bytes, %v", len(b), err)
	}
	if err := vol.WriteFile("x", strings.NewReader("memory only")); err != nil {
		t.Fatal(err)
	}
	if err := vol.Sync(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(after, before) {
		t.Error("View wrote to the device")
	}

	for _, tc := range []struct {
		name string
		img  string
		err  string
	}{
		{"FAT16", mkfsFAT(t, 200<<20, "-F", "16"), "FAT12 or FAT16"},
		{"blank", filepath.Join(t.TempDir(), "blank"), "no FAT file system"},
	} {
		if tc.name == "blank" {
			os.WriteFile(tc.img, make([]byte, 1<<20), 0o644)
		}
		f, err := os.Open(tc.img)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = View(f, 200<<20)
		f.Close()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: View = %v, want %q", tc.name, err, tc.err)
		}
	}
}
