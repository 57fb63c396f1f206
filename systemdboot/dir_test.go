package systemdboot

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestDir runs the systemd-boot backend on a directory, as on a mounted
// ESP: the same files land.
func TestDir(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	sb := New(boot.Dir(root))
	if err := sb.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	img := boot.Image{Kernel: strings.NewReader("k"), Initramfs: strings.NewReader("i"), Cmdline: "console=ttyS0", Version: "v1"}
	if err := sb.InstallSlot(ctx, meta.SlotA, img); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetDefault(ctx, meta.SlotA); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"loader/loader.conf":              "default stagehand-a[.+]*\ntimeout 0\n",
		"loader/entries/stagehand-a.conf": "title stagehand slot A (v1)\nversion v1\nsort-key stagehand-999999999\nlinux /stagehand/a/vmlinuz\ninitrd /stagehand/a/initramfs\noptions stagehand.slot=a console=ttyS0\n",
		"stagehand/a/vmlinuz":             "k",
		"stagehand/a/initramfs":           "i",
	} {
		if b, err := os.ReadFile(filepath.Join(root, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "EFI/BOOT/BOOTX64.EFI")); err != nil {
		t.Error(err)
	}
	if _, err := boot.Dir(root).ReadFile("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: %v", err)
	}
	if err := sb.InstallSlot(ctx, "c", img); err == nil {
		t.Error("InstallSlot(c) succeeded")
	}
}
