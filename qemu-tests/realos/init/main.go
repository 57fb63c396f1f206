// Command init is the real OS's init in its slot's initramfs: prestage execs
// it (/init) once it has decided that nothing needs applying, and it loads
// the kernel modules the OS needs from the initramfs, mounts the root file
// system (/root.sfs, a squashfs) read-only through a loop device under a
// tmpfs overlay with the slot's own layer (/slot.sfs, a squashfs: the
// stagehand binaries, units and health checks, the slot's version) as the
// overlay's top read-only layer, and switch_roots into systemd. Any failure is logged to
// /dev/kmsg and ends PID 1, which panic= on the command line turns into a
// reset.
package main

import (
	"errors"
	"fmt"
	"io"
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
	slotImage = "/slot.sfs"
	lower     = "/.realos/lower" // the root image
	slotLower = "/.realos/slot"  // the slot's layer
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
	for _, d := range []string{lower, slotLower, rw, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	rootDev, err := mountSquashfs(rootImage, lower)
	if err != nil {
		return err
	}
	slotDev, err := mountSquashfs(slotImage, slotLower)
	if err != nil {
		return err
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
	// The leftmost lower directory is the top one: the slot's files hide
	// the root image's.
	opts := fmt.Sprintf("lowerdir=%s:%s,upperdir=%s,workdir=%s", slotLower, lower, upper, work)
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the root overlay (%s): %w", opts, err)
	}
	logf("root: %s (%s, squashfs, read-only) under a tmpfs overlay with the slot's layer %s (%s)", rootImage, rootDev, slotImage, slotDev)
	return nil
}

// mountSquashfs mounts the squashfs image read-only on dir through a loop
// device and returns the device.
func mountSquashfs(image, dir string) (string, error) {
	l, err := loop.New(image, "squashfs", "")
	if err != nil {
		return "", fmt.Errorf("loop device for %s: %w", image, err)
	}
	if _, err := l.Mount(dir, unix.MS_RDONLY); err != nil {
		return "", fmt.Errorf("mounting %s (%s) on %s: %w", image, l.Dev, dir, err)
	}
	return l.Dev, nil
}
