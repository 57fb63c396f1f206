package fat

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stagehand-dev/stagehand/fat/fattest"
)

func newESP(t *testing.T, size int64) (*Volume, string) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "esp.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	esp, err := Format(f, size, "EFI")
	if err != nil {
		t.Fatal(err)
	}
	return esp, img
}

func TestFAT(t *testing.T) {
	esp, img := newESP(t, 260<<20)
	big := bytes.Repeat([]byte("kernel!\n"), 3<<20/8+13)
	for _, w := range []struct {
		name string
		data []byte
	}{
		{"EFI/BOOT/BOOTX64.EFI", []byte("MZ efi")},
		{"stagehand/a/vmlinuz", big},
		{"stagehand/a/initramfs", []byte("070701 initramfs")},
		{"loader/entries/stagehand-a.conf", []byte("linux /stagehand/a/vmlinuz\n")},
		{"loader/entries/stagehand-b+3.conf", []byte("linux /stagehand/b/vmlinuz\n")},
		{"stagehand/a/vmlinuz", big[:100000]}, // replaced by a smaller one: clusters freed
	} {
		if err := esp.WriteFile(w.name, bytes.NewReader(w.data)); err != nil {
			t.Fatalf("WriteFile %s: %v", w.name, err)
		}
	}
	if err := esp.Rename("loader/entries/stagehand-b+3.conf", "loader/entries/stagehand-b+2-1.conf"); err != nil {
		t.Fatal(err)
	}
	if err := esp.WriteFile("loader/entries/old.conf", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := esp.Rename("loader/entries/old.conf", "loader/entries/stagehand-a.conf"); err != nil {
		t.Fatal(err) // over an existing file
	}
	if err := esp.Remove("stagehand/a/initramfs"); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		err  error
	}{
		{"ReadFile", func() error { _, err := esp.ReadFile("nope/x"); return err }()},
		{"ReadFile in dir", func() error { _, err := esp.ReadFile("loader/nope"); return err }()},
		{"ReadDir", func() error { _, err := esp.ReadDir("nope"); return err }()},
		{"Remove", esp.Remove("stagehand/a/initramfs")},
		{"Rename", esp.Rename("loader/nope", "loader/x")},
	} {
		if !errors.Is(op.err, fs.ErrNotExist) {
			t.Errorf("%s of a missing file: %v, want fs.ErrNotExist", op.name, op.err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}

	// Read back through a fresh reader of the same bytes.
	f, _ := os.Open(img)
	defer f.Close()
	again, err := Open(f, 260<<20)
	if err != nil {
		t.Fatal(err)
	}
	names, err := again.ReadDir("loader/entries")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2-1.conf"}, names); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	if b, _ := again.ReadFile("stagehand/a/vmlinuz"); !bytes.Equal(b, big[:100000]) {
		t.Errorf("vmlinuz read back is %d bytes, want the 100000 written", len(b))
	}
	if b, _ := again.ReadFile("loader/entries/stagehand-a.conf"); string(b) != "x" {
		t.Errorf("renamed-over entry holds %q", b)
	}

	// The real tools agree.
	out := fattest.Fsck(t, img)
	t.Logf("fsck.fat -n:\n%s", out)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "11 files") {
		t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
	}
	if got := fattest.Mtools(t, "mdir", img, 0, "-b", "::/loader/entries"); !strings.Contains(got, "stagehand-b+2-1.conf") || !strings.Contains(got, "stagehand-a.conf") {
		t.Errorf("mdir sees:\n%s", got)
	}
	if got := fattest.Mtools(t, "mtype", img, 0, "::/EFI/BOOT/BOOTX64.EFI"); got != "MZ efi" {
		t.Errorf("mtype sees %q", got)
	}
}

func TestFAT64MiB(t *testing.T) {
	if _, err := Format(nil, 64<<20, "EFI"); err == nil || !strings.Contains(err.Error(), "64 MiB") {
		t.Fatalf("Format(64 MiB) = %v", err)
	}
}
