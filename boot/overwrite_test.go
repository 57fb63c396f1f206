package boot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDirOverwriteFile: Dir.OverwriteFile writes in place (same inode,
// same size) and refuses what would change the file's size or create it.
func TestDirOverwriteFile(t *testing.T) {
	d := Dir(t.TempDir())
	if err := d.WriteFile("grub/grubenv", strings.NewReader("0123456789")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(string(d), "grub", "grubenv")
	before, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.OverwriteFile("grub/grubenv", 3, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "012abc6789" {
		t.Errorf("the file holds %q", b)
	}
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino {
		t.Error("the file was re-created")
	}
	for _, tc := range []struct {
		name, file string
		off        int64
		p          string
		notExist   bool
	}{
		{"past the end", "grub/grubenv", 8, "abc", false},
		{"negative offset", "grub/grubenv", -1, "a", false},
		{"absent", "grub/other", 0, "a", true},
		{"a directory", "grub", 0, "a", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.OverwriteFile(tc.file, tc.off, []byte(tc.p))
			if err == nil {
				t.Fatal("OverwriteFile succeeded")
			}
			if tc.notExist != errors.Is(err, fs.ErrNotExist) {
				t.Errorf("OverwriteFile = %v; fs.ErrNotExist: %v", err, tc.notExist)
			}
			if b, _ := os.ReadFile(p); string(b) != "012abc6789" {
				t.Errorf("the file holds %q", b)
			}
			if _, err := os.Stat(filepath.Join(string(d), "grub", "other")); err == nil {
				t.Error("OverwriteFile created a file")
			}
		})
	}
}
