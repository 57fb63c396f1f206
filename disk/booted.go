package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/stagehand-dev/stagehand/efivar"
)

// LoaderVendorGUID is the vendor GUID of the Boot Loader Interface variables
// that systemd-boot sets.
const LoaderVendorGUID = efivar.LoaderVendor

// EFIVarsDir is where efivarfs is mounted.
const EFIVarsDir = efivar.DefaultDir

// ErrBootDiskUnknown is returned when the firmware did not say which disk
// booted.
var ErrBootDiskUnknown = errors.New("cannot tell which disk booted")

// BootedPartUUID returns the GUID of the partition the boot loader was loaded
// from (LoaderDevicePartUUID), lower-case, reading the variables at efivars:
// an efivarfs, or a directory of files in its format.
func BootedPartUUID(efivars string) (string, error) {
	return BootedPartUUIDFrom(efivar.Dir(efivars))
}

// BootedPartUUIDFrom is BootedPartUUID reading the variable from vars.
func BootedPartUUIDFrom(vars efivar.Store) (string, error) {
	s, err := efivar.GetString(vars, "LoaderDevicePartUUID", efivar.LoaderVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: the firmware variable LoaderDevicePartUUID is not set (not booted by systemd-boot?); pass --disk", ErrBootDiskUnknown)
	}
	if err != nil {
		return "", fmt.Errorf("%w: reading LoaderDevicePartUUID: %v; pass --disk", ErrBootDiskUnknown, err)
	}
	s = strings.ToLower(s)
	if len(s) != 36 || strings.Count(s, "-") != 4 {
		return "", fmt.Errorf("%w: LoaderDevicePartUUID %q is not a GUID; pass --disk", ErrBootDiskUnknown, s)
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
	vars, err := efivar.NewFS(EFIVarsDir)
	if err != nil {
		return "", fmt.Errorf("%w: %v; pass --disk", ErrBootDiskUnknown, err)
	}
	return BootedUnder("/", vars)
}

// BootedUnder is Booted for the system whose /sys and /dev are under root
// (a container's view of its host: the host's root mounted at /host, or
// its /dev mounted over the container's), whose firmware variables are
// vars: the partition LoaderDevicePartUUID names is looked for on the
// disks of root/sys/block, through their nodes in root/dev.
func BootedUnder(root string, vars efivar.Store) (string, error) {
	uuid, err := BootedPartUUIDFrom(vars)
	if err != nil {
		return "", err
	}
	return FindByPartUUID(filepath.Join(root, "sys/block"), filepath.Join(root, "dev"), uuid)
}
