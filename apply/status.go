package apply

import (
	"context"
	"errors"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/bootloader"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
)

// LoaderStatus is what the bootloader holds, for stager status.
type LoaderStatus struct {
	Entries  []boot.SlotEntry `json:"entries"`
	Default  meta.Slot        `json:"default,omitempty"`
	BootOnce meta.Slot        `json:"boot_once,omitempty"`
	// Selected is the slot whose entry the bootloader says it booted
	// (LoaderEntrySelected): how a UKI booted by the firmware, whose
	// command line names no slot, is known.
	Selected meta.Slot `json:"selected,omitempty"`
}

// ReadLoader reads the slots' entries, the default and the boot-once slot
// from the disk at path, without writing; vars may be nil (no EFI
// variables: systemd-boot's boot-once is then not known).
func ReadLoader(ctx context.Context, path string, vars efivar.Store) (*LoaderStatus, error) {
	d, err := disk.Open(path, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	espPart, err := d.Find(disk.LabelESP)
	if err != nil {
		return nil, err
	}
	var esp boot.FS
	if mnt, err := d.MountPoint(espPart.Index); err != nil {
		return nil, err
	} else if mnt != "" {
		esp = boot.Dir(mnt)
	} else if esp, err = fat.Open(espPart, espPart.Size); err != nil {
		return nil, err
	}
	l := bootloader.Find(esp, bootloader.Options{Vars: vars})
	st := &LoaderStatus{}
	if st.Entries, err = l.Slots(ctx); err != nil {
		return nil, err
	}
	if st.Default, err = l.Default(ctx); err != nil {
		return nil, err
	}
	// Boot-once and the boot record: systemd-boot's are in vars (none
	// without them), GRUB's in grubenv and the command line.
	if s, ok, err := l.BootOnce(ctx); err == nil && ok {
		st.BootOnce = s
	} else if err != nil && !errors.Is(err, boot.ErrNoEFIVars) {
		return nil, err
	}
	if s, ok, err := l.(boot.BootRecord).BootedSlot(ctx); err == nil && ok {
		st.Selected = s
	} else if err != nil && !errors.Is(err, boot.ErrNoEFIVars) {
		return nil, err
	}
	return st, nil
}
