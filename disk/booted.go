package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/stagehand-dev/stagehand/cmdline"
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

// PartUUIDParam is the kernel parameter by which a bootloader that sets no
// LoaderDevicePartUUID names the partition it was loaded from: the
// stagehand grub.cfg passes it (GRUB implements no Boot Loader Interface,
// and a legacy BIOS has no variables at all), and a kexec passes it on.
const PartUUIDParam = "stagehand.partuuid"

// BootedPartUUID returns the GUID of the partition the boot loader was
// loaded from, lower-case: PartUUIDParam in the kernel command line params
// when it is there, else the variable LoaderDevicePartUUID (systemd-boot)
// in vars; vars nil: a machine without UEFI.
func BootedPartUUID(params string, vars efivar.Store) (string, error) {
	what := PartUUIDParam + "="
	s, ok := cmdline.Get(params, PartUUIDParam)
	if !ok {
		if vars == nil {
			return "", fmt.Errorf("%w: not booted through UEFI, and no %s= on the kernel command line (booted by a loader other than stagehand's GRUB script?); pass --disk", ErrBootDiskUnknown, PartUUIDParam)
		}
		what = "LoaderDevicePartUUID"
		var err error
		s, err = efivar.GetString(vars, what, efivar.LoaderVendor)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: neither %s= on the kernel command line nor the firmware variable LoaderDevicePartUUID (not booted by systemd-boot or stagehand's GRUB script?); pass --disk", ErrBootDiskUnknown, PartUUIDParam)
		}
		if err != nil {
			return "", fmt.Errorf("%w: reading LoaderDevicePartUUID: %v; pass --disk", ErrBootDiskUnknown, err)
		}
	}
	s = strings.ToLower(s)
	if len(s) != 36 || strings.Count(s, "-") != 4 {
		return "", fmt.Errorf("%w: %s %q is not a GUID; pass --disk", ErrBootDiskUnknown, what, s)
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
	var vars efivar.Store
	if efivar.UEFIUnder("/") {
		fsv, err := efivar.NewFS(EFIVarsDir)
		if err != nil {
			return "", fmt.Errorf("%w: %v; pass --disk", ErrBootDiskUnknown, err)
		}
		vars = fsv
	}
	return BootedUnder("/", vars)
}

// BootedUnder is Booted for the system whose /sys and /dev are under root
// (a container's view of its host: the host's root mounted at /host, or
// its /dev mounted over the container's), whose firmware variables are
// vars (nil: none): the partition BootedPartUUID names, from the running
// kernel's command line (/proc/cmdline, the host's in a container too) and
// vars, is looked for on the disks of root/sys/block, through their nodes
// in root/dev.
func BootedUnder(root string, vars efivar.Store) (string, error) {
	params, _ := os.ReadFile("/proc/cmdline")
	uuid, err := BootedPartUUID(string(params), vars)
	if err != nil {
		return "", err
	}
	return FindByPartUUID(filepath.Join(root, "sys/block"), filepath.Join(root, "dev"), uuid)
}
