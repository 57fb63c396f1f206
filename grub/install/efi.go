package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/stagehand-dev/stagehand/boot"
)

// EFIRemovablePath is where EFI puts GRUB on the ESP: the removable
// media path, which the firmware boots without a boot entry.
const EFIRemovablePath = "EFI/BOOT/BOOTX64.EFI"

// efiTempPath is where EFI writes the image before renaming it to
// EFIRemovablePath: a cut while it is written leaves the old loader whole.
const efiTempPath = "EFI/BOOT/BOOTX64.TMP"

// EFI builds GRUB for UEFI (BuildImage for PlatformEFI; spec's
// Platform may be left empty, its Prefix defaults to EFIPrefix, so that
// GRUB reads /grub/grub.cfg on the partition it was loaded from) and puts
// it on the ESP at EFIRemovablePath: written beside it, synced, renamed
// over it, synced. The image is built and checked before the ESP is
// touched: an error before the first write leaves the ESP unchanged. An
// identical image there already is not written again.
func EFI(ctx context.Context, esp boot.FS, spec ImageSpec) error {
	if spec.Platform == "" {
		spec.Platform = PlatformEFI
	}
	if spec.Platform != PlatformEFI {
		return fmt.Errorf("installing GRUB for UEFI: platform %s is not %s", spec.Platform, PlatformEFI)
	}
	img, err := BuildImage(ctx, spec)
	if err != nil {
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	old, err := esp.ReadFile(EFIRemovablePath)
	switch {
	case err == nil && bytes.Equal(old, img):
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	if err := esp.WriteFile(efiTempPath, bytes.NewReader(img)); err != nil {
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	if err := esp.Sync(); err != nil {
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	if err := esp.Rename(efiTempPath, EFIRemovablePath); err != nil {
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	if err := esp.Sync(); err != nil {
		return fmt.Errorf("installing GRUB for UEFI: %w", err)
	}
	return nil
}
