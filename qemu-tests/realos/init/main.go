// Command init is the real OS's init in its slot's initramfs: prestage execs
// it (/init) once it has decided that nothing needs applying, and it loads
// the kernel modules the OS needs from the initramfs, mounts the root file
// system (/root.sfs, a squashfs) read-only through a loop device under a
// tmpfs overlay, puts the slot's own layer (/slot: the stagehand binaries,
// units and health checks, the slot's version) into the overlay's upper
// directory, and switch_roots into systemd. Any failure is logged to
// /dev/kmsg and ends PID 1, which panic= on the command line turns into a
// reset.
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
	lower     = "/.realos/lower" // the squashfs
	rw        = "/.realos/rw"    // tmpfs: upper and work directories
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
	for _, m := range []struct {
		src, dir, fstype, data string
		flags                  uintptr
	}{
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dir, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
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
	for _, d := range []string{lower, rw, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	l, err := loop.New(rootImage, "squashfs", "")
	if err != nil {
		return fmt.Errorf("loop device for %s: %w", rootImage, err)
	}
	if _, err := l.Mount(lower, unix.MS_RDONLY); err != nil {
		return fmt.Errorf("mounting %s (%s) on %s: %w", rootImage, l.Dev, lower, err)
	}
	if err := unix.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mounting the overlay's tmpfs: %w", err)
	}
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	// The slot's own layer goes into the upper directory before the
	// overlay is mounted: it shows through as part of the root.
	n, err := copyTree(slotTree, upper)
	if err != nil {
		return fmt.Errorf("copying the slot's layer: %w", err)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the root overlay (%s): %w", opts, err)
	}
	logf("root: %s (%s, squashfs, read-only) under a tmpfs overlay with the slot's %d files", rootImage, l.Dev, n)
	return nil
}

// copyTree copies the directories, regular files and symbolic links under
// src into dst, keeping their modes, and returns how many files it copied.
func copyTree(src, dst string) (int, error) {
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			n++
			return os.Symlink(target, to)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n++
			return os.WriteFile(to, b, fi.Mode().Perm())
		}
		return fmt.Errorf("%s: not a directory, file or link", p)
	})
	return n, err
}
