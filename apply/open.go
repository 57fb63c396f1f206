package apply

import (
	"context"
	"fmt"
	"github.com/google/uuid"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/bootloader"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// Disk is the boot flow's environment on a real disk; Close releases it.
type Disk struct {
	Env
	Disk  *disk.Disk
	STAGE *disk.Region
}

// Open opens the disk at path for the boot flow: META (locked for writing),
// STAGE, and the ESP's bootloader (bootloader.Find: GRUB's or systemd-boot's,
// with EFI variables from vars, nil on a machine without UEFI). The ESP is
// opened when first used: a mounted ESP is written through its mount;
// otherwise through go-diskfs's FAT. The running kernel's command line,
// which the bootloader's boot record may be read from, is /proc/cmdline's.
func Open(ctx context.Context, path string, vars efivar.Store) (*Disk, error) {
	return OpenWith(ctx, path, OpenOptions{Vars: vars})
}

// OpenOptions are what OpenWith takes beyond the disk.
type OpenOptions struct {
	// Vars are the firmware's variables; nil on a machine without UEFI.
	Vars efivar.Store
	// Cmdline is the running kernel's command line, from which GRUB's
	// boot record (stagehand.grub=) is read; nil reads /proc/cmdline. A
	// simulated machine passes the one its simulated bootloader gave.
	Cmdline *string
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, path string, o OpenOptions) (*Disk, error) {
	vars := o.Vars
	disk.TriggerESPAutomounts() // before the lock: see there
	store, d, err := disk.OpenMETA(ctx, path, true)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Disk, error) {
		d.Close()
		return nil, err
	}
	stage, err := d.Find(disk.LabelSTAGE)
	if err != nil {
		return fail(err)
	}
	espPart, err := d.Find(disk.LabelESP)
	if err != nil {
		return fail(err)
	}
	esp := &lazyESP{open: func() (boot.FS, error) {
		mnt, err := d.MountPoint(espPart.Index)
		if err != nil {
			return nil, err
		}
		if mnt != "" {
			return boot.Dir(mnt), nil
		}
		f, err := fat.Open(espPart, espPart.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", espPart.Name(), err)
		}
		return f, nil
	}}
	lo := bootloader.Options{Vars: vars, Cmdline: o.Cmdline}
	if g, err := uuid.Parse(espPart.GUID); err == nil {
		ss := uint64(d.SectorSize())
		lo.ESP = &systemdboot.ESPPartition{
			Index: uint32(espPart.Index), GUID: g, StartLBA: uint64(espPart.Offset) / ss, SizeLBA: uint64(espPart.Size) / ss}
	}
	return &Disk{
		Env: Env{
			Store:     store,
			Stage:     stage,
			StageSize: stage.Size,
			Loader:    bootloader.Find(esp, lo),
			TPMSealed: d.TPM2Sealed,
			Databases: func() (string, string, error) {
				if vars == nil {
					return "", "", boot.ErrNoEFIVars
				}
				db, err := efivar.SHA256(vars, "db", efivar.ImageSecurityVendor)
				if err != nil {
					return "", "", err
				}
				dbx, err := efivar.SHA256(vars, "dbx", efivar.ImageSecurityVendor)
				return db, dbx, err
			},
		},
		Disk:  d,
		STAGE: stage,
	}, nil
}

// Close syncs and closes the disk, releasing its lock.
func (d *Disk) Close() error {
	err := d.Disk.Sync()
	if cerr := d.Disk.Close(); err == nil {
		err = cerr
	}
	return err
}
