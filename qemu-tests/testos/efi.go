package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// efiVars mounts efivarfs (its module comes in the initramfs) and opens it.
func efiVars() (*efivar.FS, error) {
	if _, err := efivar.NewFS(efivar.DefaultDir); err != nil {
		// stagehand.efivars=ro: the OS of a machine whose firmware takes
		// no variable writes at run time (the kernel mounts efivarfs
		// read-only where the firmware says so).
		var flags uintptr
		if cmdline()["stagehand.efivars"] == "ro" {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("efivarfs", efivar.DefaultDir, "efivarfs", flags, ""); err != nil && err != unix.EBUSY {
			return nil, fmt.Errorf("mounting efivarfs: %w", err)
		}
	}
	return efivar.NewFS(efivar.DefaultDir)
}

// showEFIVars prints the Boot Loader Interface variables that tell what
// systemd-boot did at this boot: the one-shot entry left (none once the
// loader consumed it), the entry ID it booted, and the entry file it
// renamed to count a try.
func showEFIVars() error {
	vars, err := efiVars()
	if err != nil {
		return err
	}
	get := func(name string) string {
		v, err := efivar.GetString(vars, name, efivar.LoaderVendor)
		if errors.Is(err, fs.ErrNotExist) {
			return "none"
		}
		if err != nil {
			return "error(" + err.Error() + ")"
		}
		return v
	}
	say("efivars: oneshot=%s selected=%s bootcount=%s",
		get(systemdboot.OneShotVar), get("LoaderEntrySelected"), get("LoaderBootCountPath"))
	return nil
}

// bootOnce sets boot once to slot through the systemd-boot backend on the
// ESP of /dev/vda (read, never written) and the real efivarfs; on the way
// it clears it and sets it again, so that efivarfs's delete of an immutable
// variable is tried too.
func bootOnce(slot meta.Slot) error {
	if err := waitDisks(10 * time.Second); err != nil {
		return err
	}
	vars, err := efiVars()
	if err != nil {
		return err
	}
	d, err := disk.Open("/dev/vda", false)
	if err != nil {
		return err
	}
	defer d.Close()
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		return err
	}
	esp, err := fat.Open(r, r.Size)
	if err != nil {
		return err
	}
	sb := systemdboot.New(esp, systemdboot.WithEFIVars(vars))
	ctx := context.Background()
	check := func(want meta.Slot) error {
		got, ok, err := sb.BootOnce(ctx)
		if err != nil {
			return err
		}
		if want == "" && ok || want != "" && (!ok || got != want) {
			return fmt.Errorf("boot once reads back as %q (set: %v), want %q", got, ok, want)
		}
		return nil
	}
	for _, op := range []func() error{
		func() error { return sb.SetBootOnce(ctx, slot) },
		func() error { return check(slot) },
		func() error { return sb.ClearBootOnce(ctx) },
		func() error { return check("") },
		func() error { return sb.SetBootOnce(ctx, slot) },
		func() error { return check(slot) },
	} {
		if err := op(); err != nil {
			return err
		}
	}
	v, err := efivar.GetString(vars, systemdboot.OneShotVar, efivar.LoaderVendor)
	if err != nil {
		return err
	}
	say("bootonce=%s oneshot=%s", slot, v)
	return nil
}

// setOneShot writes LoaderEntryOneShot as given, bypassing the backend: to
// see which names systemd-boot matches.
func setOneShot(v string) error {
	vars, err := efiVars()
	if err != nil {
		return err
	}
	if err := efivar.SetString(vars, systemdboot.OneShotVar, efivar.LoaderVendor,
		efivar.NonVolatile|efivar.BootServiceAccess|efivar.RuntimeAccess, v); err != nil {
		return err
	}
	say("oneshot=%s", v)
	return nil
}

// reboot restarts the machine through the firmware.
func reboot() error {
	unix.Sync()
	say("rebooting")
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	return os.NewSyscallError("reboot", err)
}

// showSecureBoot prints what the firmware and the kernel say of Secure
// Boot: the SecureBoot EFI variable (1: enforced) and the kernel's lockdown
// mode (from securityfs, which it mounts).
func showSecureBoot() error {
	vars, err := efiVars()
	if err != nil {
		return err
	}
	sb, err := efivar.SecureBoot(vars)
	if err != nil {
		return err
	}
	const securityfs = "/sys/kernel/security"
	if err := unix.Mount("securityfs", securityfs, "securityfs", 0, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting securityfs: %w", err)
	}
	b, err := os.ReadFile(securityfs + "/lockdown")
	if err != nil {
		return err
	}
	say("secureboot: SecureBoot=%v lockdown=%s", sb, strings.TrimSpace(string(b)))
	return nil
}
