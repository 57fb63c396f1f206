package realos

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stagehand-dev/stagehand/initramfs"
)

// repoRoot is the top of the work tree.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// TestSlotArchive: the real OS's part of a slot's initramfs holds its init,
// the root image, the modules of Modules, and the slot's layer as the
// squashfs /slot.sfs (read back with unsquashfs): the stager, contrib's units enabled as their [Install] sections say, the
// example checks and the bless-boot drop-in where systemd and stager check
// look, the masks, the ESP's automount, the version and the extra files.
func TestSlotArchive(t *testing.T) {
	k := filepath.Join(repoRoot(), "build", "kernels", "cloud")
	rel, err := os.ReadFile(filepath.Join(k, "release"))
	if err != nil {
		t.Fatalf("no Debian kernel in %s (%v): run 'make deps' (scripts/vm-deps.sh) as root", k, err)
	}
	release := strings.TrimSpace(string(rel))
	mods, err := initramfs.OpenModules(filepath.Join(k, "lib", "modules", release))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"root.sfs", "init", "stager"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f+" bytes"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a, err := Slot{Root: repoRoot(), Image: filepath.Join(dir, "root.sfs"), Init: filepath.Join(dir, "init"),
		Stager: filepath.Join(dir, "stager"), Modules: mods, Version: "v7",
		Files: []initramfs.File{{Path: "etc/stagehand/check/required.d/20-x", Data: []byte("#!/bin/sh\n"), Mode: 0o755}},
	}.Archive()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := a.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Record{}
	for _, rec := range recs {
		got[rec.Name] = rec
	}
	// The layer's files are checked as unsquashfs lays them out, under
	// "slot/".
	sfs, ok := got["slot.sfs"]
	if !ok {
		t.Fatal("slot.sfs is not in the archive")
	}
	sfsPath := filepath.Join(dir, "slot.sfs")
	f, err := os.Create(sfsPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, io.NewSectionReader(sfs.ReaderAt, 0, int64(sfs.FileSize))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tree := filepath.Join(dir, "slot")
	if out, err := exec.Command("unsquashfs", "-no-progress", "-d", tree, sfsPath).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v: %s", err, out)
	}
	const units = "slot/usr/lib/systemd/system/"
	for _, tt := range []struct {
		path string
		mode fs.FileMode // type bits and permissions
		data string      // content, or link target; "" to skip
	}{
		{"init", 0o755, "init bytes"},
		{"root.sfs", 0o644, "root.sfs bytes"},
		{"slot.sfs", 0o644, ""},
		{"slot/usr/bin/stager", 0o755, "stager bytes"},
		{"slot/etc/stagehand/version", 0o644, "v7\n"},
		{"slot/etc/fstab", 0o644, ""},
		{units + "stagehand-check.service", 0o644, ""},
		{units + "stagehand-confirm.service", 0o644, ""},
		{units + "boot-complete.target.requires/stagehand-check.service", fs.ModeSymlink | 0o777, "../stagehand-check.service"},
		{units + "basic.target.wants/stagehand-confirm.service", fs.ModeSymlink | 0o777, "../stagehand-confirm.service"},
		{units + "systemd-bless-boot.service.d/50-stagehand.conf", 0o644, ""},
		{units + "multi-user.target.wants/stagehand-test.service", fs.ModeSymlink | 0o777, "../stagehand-test.service"},
		{"slot/usr/lib/stagehand/check/required.d/10-systemd-units", 0o755, ""},
		{"slot/usr/lib/stagehand/check/wanted.d/50-clock", 0o755, ""},
		{"slot/usr/lib/stagehand-test/driver", 0o755, ""},
		{"slot/etc/stagehand/check/required.d/20-x", 0o755, "#!/bin/sh\n"},
		{"slot/etc/systemd/system/getty.target", fs.ModeSymlink | 0o777, "/dev/null"},
		{"slot/etc/systemd/system-generators/systemd-gpt-auto-generator", fs.ModeSymlink | 0o777, "/dev/null"},
		{"lib/modules/" + release + "/kernel/fs/squashfs/squashfs.ko", 0o644, ""},
		{"lib/modules/" + release + "/kernel/fs/autofs/autofs4.ko", 0o644, ""},
		{"lib/modules/" + release + "/modules.dep", 0o644, ""},
	} {
		t.Run(tt.path, func(t *testing.T) {
			var mode fs.FileMode
			var data []byte
			if strings.HasPrefix(tt.path, "slot/") {
				p := filepath.Join(dir, tt.path)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatalf("%s is not in the slot's layer: %v", tt.path, err)
				}
				mode = fi.Mode() & (fs.ModeSymlink | 0o777)
				switch {
				case mode&fs.ModeSymlink != 0:
					var target string
					target, err = os.Readlink(p)
					data = []byte(target)
				case tt.data != "":
					data, err = os.ReadFile(p)
				}
				if err != nil {
					t.Fatal(err)
				}
			} else {
				rec, ok := got[tt.path]
				if !ok {
					t.Fatalf("%s is not in the archive", tt.path)
				}
				mode = fs.FileMode(rec.Mode & 0o777)
				if rec.Mode&cpio.S_IFMT == cpio.S_IFLNK {
					mode |= fs.ModeSymlink
				}
				if tt.data != "" {
					if data, err = io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize))); err != nil {
						t.Fatal(err)
					}
				}
			}
			if mode != tt.mode {
				t.Errorf("mode %v, want %v", mode, tt.mode)
			}
			if tt.data == "" {
				return
			}
			if string(data) != tt.data {
				t.Errorf("content %q, want %q", data, tt.data)
			}
		})
	}
}
