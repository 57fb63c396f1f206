package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"
)

// LoaderVendorGUID is the vendor GUID of the Boot Loader Interface variables
// that systemd-boot sets.
const LoaderVendorGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// EFIVarsDir is where efivarfs is mounted.
const EFIVarsDir = "/sys/firmware/efi/efivars"

// ErrBootDiskUnknown is returned when the firmware did not say which disk
// booted.
var ErrBootDiskUnknown = errors.New("cannot tell which disk booted")

// BootedPartUUID returns the GUID of the partition the boot loader was loaded
// from (LoaderDevicePartUUID), lower-case.
func BootedPartUUID(efivars string) (string, error) {
	name := filepath.Join(efivars, "LoaderDevicePartUUID-"+LoaderVendorGUID)
	raw, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: the firmware variable LoaderDevicePartUUID is not set (not booted by systemd-boot?); pass --disk", ErrBootDiskUnknown)
	}
	if err != nil {
		return "", fmt.Errorf("%w: reading %s: %v; pass --disk", ErrBootDiskUnknown, name, err)
	}
	return parseUTF16Var(raw)
}

// parseUTF16Var decodes an efivarfs file holding a UTF-16LE string: four
// bytes of attributes, then the string, usually NUL-terminated.
func parseUTF16Var(raw []byte) (string, error) {
	if len(raw) < 4 || len(raw)%2 != 0 {
		return "", fmt.Errorf("%w: LoaderDevicePartUUID is %d bytes, not a UTF-16 string", ErrBootDiskUnknown, len(raw))
	}
	u := make([]uint16, 0, (len(raw)-4)/2)
	for i := 4; i+1 < len(raw); i += 2 {
		c := binary.LittleEndian.Uint16(raw[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	s := strings.ToLower(string(utf16.Decode(u)))
	if len(s) != 36 || strings.Count(s, "-") != 4 {
		return "", fmt.Errorf("%w: LoaderDevicePartUUID %q is not a GUID", ErrBootDiskUnknown, s)
	}
	return s, nil
}

// FindByPartUUID returns the whole-disk device (in devDir) holding the
// partition whose GPT GUID is uuid, by reading the GPT of every disk listed
// in sysBlock (/sys/block). RAM disks are skipped.
func FindByPartUUID(sysBlock, devDir, uuid string) (string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("listing disks: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		dev := filepath.Join(devDir, name)
		d, err := Open(dev, false)
		if err != nil {
			continue // no GPT, no medium, not readable: not the one
		}
		parts := d.Partitions()
		d.Close()
		for _, p := range parts {
			if strings.EqualFold(p.GUID, uuid) {
				return dev, nil
			}
		}
	}
	return "", fmt.Errorf("%w: no disk in %s holds partition %s; pass --disk", ErrBootDiskUnknown, sysBlock, uuid)
}

// Booted returns the whole-disk device that the running system booted from.
func Booted() (string, error) {
	uuid, err := BootedPartUUID(EFIVarsDir)
	if err != nil {
		return "", err
	}
	return FindByPartUUID("/sys/block", "/dev", uuid)
}
