// Command init is the real OS's init in its slot's initramfs: prestage execs
// it (/init), and it loads the kernel modules the OS needs from the
// initramfs, mounts the root file system (/root.sfs, a squashfs) read-only
// through a loop device, puts the slot's own files (/slot: its version, its
// health checks) in a tmpfs that becomes /run, and switch_roots into
// systemd. Any failure is logged to /dev/kmsg and ends in a panic (PID 1
// exits), which panic= on the command line turns into a reset.
package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/u-root/u-root/pkg/mount"
	"github.com/u-root/u-root/pkg/mount/loop"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/initramfs/kmod"
)

const (
	rootImage = "/root.sfs"
	slotTree  = "/slot"
	newRoot   = "/sysroot"
	systemd   = "/lib/systemd/systemd"
)

var kmsg io.Writer = os.Stderr

func logf(format string, args ...any) {
	fmt.Fprintf(kmsg, "realos-init: "+format+"\n", args...)
}

func main() {
	start := time.Now()
	if err := run(); err != nil {
		logf("%v", err)
		os.Exit(1)
	}
	logf("switching to systemd after %s", time.Since(start).Round(time.Millisecond))
	if err := mount.SwitchRoot(newRoot, systemd); err != nil {
		logf("%v", err)
		os.Exit(1)
	}
}

func run() error {
	for _, m := range []struct{ src, dir, fstype, data string }{
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755,nosuid,nodev"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s: %w", m.dir, err)
		}
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		kmsg = f
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	loaded, err := kmod.LoadAll(dir)
	if err != nil {
		return fmt.Errorf("loading modules: %w", err)
	}
	logf("loaded %d modules", len(loaded))
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	l, err := loop.New(rootImage, "squashfs", "")
	if err != nil {
		return fmt.Errorf("loop device for %s: %w", rootImage, err)
	}
	if _, err := l.Mount(newRoot, unix.MS_RDONLY); err != nil {
		return fmt.Errorf("mounting %s (%s) on %s: %w", rootImage, l.Dev, newRoot, err)
	}
	logf("mounted %s read-only on %s (%s)", rootImage, newRoot, l.Dev)
	// The slot's own files go to /run, which the switch moves into the new
	// root: systemd keeps a /run it finds mounted.
	return copyTree(slotTree, "/run")
}

// copyTree copies the regular files and directories under src into dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == src {
			return filepath.SkipDir
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(to, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, fi.Mode().Perm())
	})
}
