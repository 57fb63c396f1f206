package systemdboot

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/efivar"
)

// ESPPartition is where the ESP lies on its disk, as a UEFI hard drive
// device path names it.
type ESPPartition struct {
	Index    uint32    // 1-based partition number
	GUID     uuid.UUID // the GPT partition's unique GUID (PARTUUID)
	StartLBA uint64
	SizeLBA  uint64
}

// WithESPPartition tells the backend where the ESP lies, for its firmware
// load options (boot.FirmwareFallback).
func WithESPPartition(p ESPPartition) Option {
	return func(s *Loader) { s.part = &p }
}

var _ boot.FirmwareFallback = (*Loader)(nil)

// The load options stagehand keeps first in BootOrder: systemd-boot at its
// own path, then at the removable-media path, both on the ESP.
const (
	bootOptionName     = "stagehand"
	fallbackOptionName = "stagehand fallback"
)

// EnsureFirmwareFallback implements boot.FirmwareFallback: "stagehand" starts
// EFI/systemd/systemd-bootx64.efi and "stagehand fallback" EFI/BOOT/BOOTX64.EFI
// (the same systemd-boot), first in BootOrder; nothing is written when they
// already are.
func (s *Loader) EnsureFirmwareFallback(ctx context.Context) error {
	if s.vars == nil {
		return boot.ErrNoEFIVars
	}
	if s.part == nil {
		return fmt.Errorf("the firmware's boot options: the ESP's partition is not known")
	}
	hd := efivar.HardDriveNode(s.part.Index, s.part.StartLBA, s.part.SizeLBA, s.part.GUID)
	var opts []efivar.LoadOption
	for _, o := range []struct{ name, path string }{{bootOptionName, systemdEFI}, {fallbackOptionName, fallbackEFI}} {
		file, err := efivar.FilePathNode(o.path)
		if err != nil {
			return err
		}
		opts = append(opts, efivar.LoadOption{Attributes: efivar.LoadOptionActive, Description: o.name, FilePath: efivar.DevicePath(hd, file)})
	}
	if _, err := efivar.EnsureFirst(s.vars, opts); err != nil {
		return fmt.Errorf("putting systemd-boot first in the firmware's BootOrder, twice: %w", err)
	}
	return nil
}
