package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// held keeps open what the steps open for the rest of the boot (the
// watchdog, files on the ESP): a closed watchdog or file would not test
// anything. mounted lists what the steps mounted, in order.
var (
	held    []*os.File
	mounted []string
)

// rebooting is closed once init has been asked to reboot.
var rebooting = make(chan struct{})

// rebootOnSIGTERM makes the test OS, as init, reboot cleanly when asked by
// SIGTERM (the reboot command, as busybox's init): close what the steps
// hold open, unmount what they mounted, sync, reboot.
func rebootOnSIGTERM() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGTERM)
	go func() {
		<-ch
		close(rebooting)
		say("init: reboot requested: closing %d held files, unmounting %v", len(held), mounted)
		for _, f := range held {
			f.Close()
		}
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := unix.Unmount(mounted[i], 0); err != nil {
				say("init: unmounting %s: %v", mounted[i], err)
			}
		}
		unix.Sync()
		say("rebooting")
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
			say("error: reboot: %v", err)
		}
	}()
}

// watchdog arms the first watchdog device (i6300esb: QEMU's -device
// i6300esb, its module in the initramfs) with a timeout of timeout
// seconds and pets it once; nothing pets it afterwards.
func watchdog(timeout int) error {
	const dev = "/dev/watchdog"
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			drivers, _ := filepath.Glob("/sys/class/watchdog/*")
			return fmt.Errorf("no %s after 10 s (watchdogs: %v): is -device i6300esb given to QEMU and i6300esb in the initramfs?", dev, drivers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	held = append(held, f)
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, timeout); err != nil {
		return os.NewSyscallError("ioctl(WDIOC_SETTIMEOUT)", err)
	}
	got, err := unix.IoctlGetInt(int(f.Fd()), unix.WDIOC_GETTIMEOUT)
	if err != nil {
		return os.NewSyscallError("ioctl(WDIOC_GETTIMEOUT)", err)
	}
	if _, err := f.Write([]byte{0}); err != nil {
		return fmt.Errorf("petting the watchdog: %w", err)
	}
	identity, _ := os.ReadFile("/sys/class/watchdog/watchdog0/identity")
	say("watchdog: armed %s (%s), timeout %d s; nothing pets it from now on", dev, trimSpace(identity), got)
	return nil
}

// hang stops the OS here for good: no power off, no reboot, as a system
// whose services deadlocked. Only a watchdog (or the test) ends it.
func hang() {
	unix.Sync()
	say("hanging")
	for {
		time.Sleep(time.Hour)
	}
}

// stageReboot runs `stager --image ref --disk /dev/vda --reboot` and, once
// it returns, waits for the reboot it asked for: this boot does nothing
// more.
func stageReboot(ref string) error {
	if err := stager("--image", ref, "--disk", "/dev/vda", "--reboot"); err != nil {
		return err
	}
	select {
	case <-rebooting:
		select {}
	case <-time.After(30 * time.Second):
		return errors.New("stager --reboot succeeded, but no reboot came in 30 s")
	}
}

// ESPMount is where the esp-hold step mounts the ESP.
const ESPMount = "/boot/efi"

// HeldFile is the file the esp-hold step creates on the ESP and keeps open.
const HeldFile = "held-open.txt"

// holdESP mounts the ESP (partition 1 of /dev/vda, label EFI) read-write
// with the kernel's vfat, as a running OS does, creates a file on it and
// keeps it open for writing, and keeps a file of systemd-boot's open for
// reading: the state in which writing the boot slots from the running
// system fails (the seed's case).
func holdESP() error {
	if err := waitDisks(10 * time.Second); err != nil {
		return err
	}
	if err := os.MkdirAll(ESPMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/dev/vda1", ESPMount, "vfat", 0, ""); err != nil {
		return fmt.Errorf("mounting /dev/vda1 (vfat) on %s: %w", ESPMount, err)
	}
	mounted = append(mounted, ESPMount)
	f, err := os.OpenFile(filepath.Join(ESPMount, HeldFile), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	held = append(held, f)
	if _, err := fmt.Fprintf(f, "held open by the test OS since %s\n", time.Now().UTC().Format(time.RFC3339)); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	r, err := os.Open(filepath.Join(ESPMount, "loader", "loader.conf"))
	if err != nil {
		return err
	}
	held = append(held, r)
	ents, _ := os.ReadDir(filepath.Join(ESPMount, "loader", "entries"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	say("esp: mounted /dev/vda1 on %s (vfat, rw); holding %s open for writing and loader/loader.conf for reading; entries %v", ESPMount, HeldFile, names)
	return nil
}

// ImagesMount is where mount-images mounts the second disk.
const ImagesMount = "/mnt"

// mountImages mounts the second virtio disk (/dev/vdb, ext4, made on the
// host with the installer images on it) read-only.
func mountImages() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/dev/vdb"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("no /dev/vdb after 10 s: the second disk is missing")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.MkdirAll(ImagesMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/dev/vdb", ImagesMount, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		return fmt.Errorf("mounting /dev/vdb (ext4) on %s: %w", ImagesMount, err)
	}
	mounted = append(mounted, ImagesMount)
	ents, _ := os.ReadDir(ImagesMount)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	say("images: mounted /dev/vdb on %s (ext4, ro): %v", ImagesMount, names)
	return nil
}

func trimSpace(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// ioWatch prints the counters of disk's completed writes and flushes
// (/sys/block/DISK/stat) each time they change, polling every millisecond,
// for the rest of the boot: console markers for cutting the power between
// two writes of a step that follows.
func ioWatch(disk string) error {
	path := filepath.Join("/sys/block", disk, "stat")
	read := func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		f := strings.Fields(string(b))
		if len(f) < 17 {
			return "", fmt.Errorf("%s: %d fields, want 17 (writes in field 5, flushes in 16)", path, len(f))
		}
		return fmt.Sprintf("writes=%s flushes=%s", f[4], f[15]), nil
	}
	last, err := read()
	if err != nil {
		return err
	}
	say("io: %s %s (watching)", disk, last)
	go func() {
		for {
			time.Sleep(time.Millisecond)
			now, err := read()
			if err != nil {
				say("io: %v", err)
				return
			}
			if now != last {
				say("io: %s %s", disk, now)
				last = now
			}
		}
	}()
	return nil
}
