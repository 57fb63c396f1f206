// Package grubtest holds what the tests of package grub and of its
// installer, grub/install, share: Debian's GRUB tools and files, FAT
// volumes for GRUB's files, what GRUB left on a disk image's ESP, and
// GRUB's console output.
package grubtest

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
)

// Lib is where Debian's grub-pc-bin, grub-efi-amd64-bin and grub-emu put
// each platform's modules and images: Lib/i386-pc, Lib/x86_64-efi,
// Lib/x86_64-emu.
const Lib = "/usr/lib/grub"

// LookTool finds one of Debian's GRUB tools (name, from package pkg) in
// PATH, or fails t.
func LookTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s (Debian package %s) is missing: run make deps", name, pkg)
	}
	return p
}

// FATSize is a size for FormatFAT: a FAT32 past its least cluster count
// with 512-byte clusters, and not 64 MiB (see fat.Format).
const FATSize = 40 << 20

// FormatFAT creates the file path of size bytes and formats it as a FAT
// labelled as an ESP; the file is closed when t ends.
func FormatFAT(t testing.TB, path string, size int64) *fat.Volume {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	vol, err := fat.Format(f, size, boot.ESPLabel)
	if err != nil {
		t.Fatal(err)
	}
	return vol
}

// ReadESP reads the file name (a path from the ESP's root) from the ESP
// of the disk image img, opened afresh, read-only: what GRUB left there.
// It fails t when img has no readable ESP; the file's own error (such as
// fs.ErrNotExist) is returned.
func ReadESP(t testing.TB, img, name string) ([]byte, error) {
	t.Helper()
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := fat.Open(r, r.Size)
	if err != nil {
		t.Fatal(err)
	}
	return esp.ReadFile(strings.TrimPrefix(name, "/"))
}

var escape = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// Console makes what GRUB printed to a terminal (grub-emu's, or a serial
// port) plain text: without escape sequences and carriage returns.
func Console(s string) string {
	return strings.ReplaceAll(escape.ReplaceAllString(s, ""), "\r", "")
}
