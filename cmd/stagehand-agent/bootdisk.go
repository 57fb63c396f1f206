package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
)

// podRoot is where the pod sees the host's /dev and efivarfs mounted (over
// its own), and efiVars opens a firmware variable directory: tests point
// them at directories.
var (
	podRoot = "/"
	efiVars = func(dir string) (efivar.Store, error) { return efivar.NewFS(dir) }
)

// bootDisk finds the disk the host booted from, as stager does on the host:
// the partition the firmware's LoaderDevicePartUUID names, on a disk of
// /sys/block, through /dev. In the Job's pod those are the host's /dev and
// efivarfs (/sys/firmware/efi/efivars) mounted at their usual places; else,
// with --host-root, the same under the host's root (a recursive bind mount
// of the host's / carries its /sys, efivarfs and /dev).
func bootDisk(hostRoot string) (string, error) {
	path, err := bootedUnder(podRoot)
	if err == nil || hostRoot == "" {
		return path, err
	}
	path, herr := bootedUnder(hostRoot)
	if herr != nil {
		return "", fmt.Errorf("%w: %s; under --host-root %s: %s; pass --disk", disk.ErrBootDiskUnknown, why(err), hostRoot, why(herr))
	}
	return path, nil
}

// why is what err says beyond ErrBootDiskUnknown and its advice.
func why(err error) string {
	s := strings.TrimPrefix(err.Error(), disk.ErrBootDiskUnknown.Error()+": ")
	return strings.TrimSuffix(s, "; pass --disk")
}

func bootedUnder(root string) (string, error) {
	if !efivar.UEFIUnder(root) {
		return disk.BootedUnder(root, nil) // a legacy BIOS: GRUB's stagehand.partuuid=
	}
	vars, err := efiVars(filepath.Join(root, disk.EFIVarsDir))
	if err != nil {
		return "", fmt.Errorf("%w: %v; pass --disk", disk.ErrBootDiskUnknown, err)
	}
	return disk.BootedUnder(root, vars)
}
