package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sgdiskDisk makes an image with a GPT sgdisk writes: a BIOS boot
// partition and a root, and free space after them.
func sgdiskDisk(t *testing.T, size int64, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, size)
	sgdisk := "/usr/sbin/sgdisk"
	if p, err := exec.LookPath("sgdisk"); err == nil {
		sgdisk = p
	}
	if out, err := exec.Command(sgdisk, append(append([]string{"-o"}, args...), img)...).CombinedOutput(); err != nil {
		t.Fatalf("sgdisk (Debian package gdisk): %v: %s", err, out)
	}
	return img
}

func TestDiskAdopt(t *testing.T) {
	dir := t.TempDir()
	kernel := testKernel(t, dir)
	initrd := filepath.Join(dir, "initramfs")
	os.WriteFile(initrd, []byte("070701"), 0o644)
	img := sgdiskDisk(t, 1100<<20, "-n", "1:2048:+1M", "-t", "1:EF02", "-n", "2:0:+200M", "-t", "2:8300")
	base := []string{"disk", "adopt", "--kernel", kernel, "--initramfs", initrd}
	before := hashFile(t, img)
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"no disk", append(base, "--bootloader", "grub-bios"), 2, "--disk is required"},
		{"no bootloader", append(base, "--disk", img), 2, "--bootloader is required: grub-bios for a legacy BIOS, grub-efi for UEFI"},
		{"systemd-boot", append(base, "--disk", img, "--bootloader", "systemd-boot"), 2, `--bootloader "systemd-boot": adopt installs GRUB`},
		{"no initramfs", []string{"disk", "adopt", "--disk", img, "--bootloader", "grub-bios", "--kernel", kernel}, 2, "give both --kernel and --initramfs"},
		{"bad size", append(base, "--disk", img, "--bootloader", "grub-bios", "--stage-size", "lots"), 2, `--stage-size "lots": not a size`},
		{"no free space", append(base, "--disk", img, "--bootloader", "grub-bios", "--stage-size", "2G"), 1, "has no free extent large enough"},
		{"missing kernel", []string{"disk", "adopt", "--disk", img, "--bootloader", "grub-bios", "--kernel", filepath.Join(dir, "nope"), "--initramfs", initrd}, 1, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := stager(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.err) || strings.Count(errOut, "\n") != 1 || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and one line saying %q", code, out, errOut, tc.code, tc.err)
			}
			if hashFile(t, img) != before {
				t.Fatal("the disk changed")
			}
		})
	}

	code, out, errOut := stager(t, append(base, "--disk", img, "--bootloader", "grub-bios", "--version", "v1", "--dry-run")...)
	if code != 0 || !strings.HasPrefix(out, "dry run, nothing written: adopting "+img+" for grub-bios with slot a (version v1, kernel 6.1.0-test) would\n") ||
		!strings.Contains(out, `  add partition 3 "EFI": new ESP (FAT32)`) || errOut != "" {
		t.Fatalf("dry run: exit %d, stdout:\n%s\nstderr %q", code, out, errOut)
	}
	if hashFile(t, img) != before {
		t.Fatal("the dry run changed the disk")
	}
	code, out, errOut = stager(t, append(base, "--disk", img, "--bootloader", "grub-bios", "--version", "v1", "--cmdline", "console=ttyS0")...)
	if code != 0 || !strings.HasPrefix(out, "adopted "+img+" for grub-bios with slot a (version v1, kernel 6.1.0-test) as default; the old /boot/grub is no longer used:\n") {
		t.Fatalf("adopt: exit %d, stdout:\n%s\nstderr %q", code, out, errOut)
	}
	t.Logf("stager disk adopt:\n%s", out)
	code, out, _ = stager(t, "meta", "list", "--disk", img)
	if code != 0 || !strings.Contains(out, `"active":"a"`) || !strings.Contains(out, `"reason":"adopted: disk`) {
		t.Errorf("meta list after adopt: exit %d:\n%s", code, out)
	}
	code, _, errOut = stager(t, append(base, "--disk", img, "--bootloader", "grub-bios")...)
	if code != 1 || !strings.Contains(errOut, "already a stagehand disk") {
		t.Errorf("second adopt: exit %d, %q", code, errOut)
	}

	// grub-efi on a disk without an ESP: the efibootmgr line.
	img = sgdiskDisk(t, 1100<<20, "-n", "1:2048:+200M", "-t", "1:8300")
	code, out, errOut = stager(t, append(base, "--disk", img, "--bootloader", "grub-efi")...)
	want := "no firmware variable is written: if this machine's firmware has a boot entry for its distribution's loader, put stagehand's first with\n  efibootmgr -c -d DISK -p 2 -L stagehand -l '\\EFI\\BOOT\\BOOTX64.EFI'\n"
	if code != 0 || !strings.HasSuffix(out, want) {
		t.Fatalf("adopt grub-efi: exit %d, stdout:\n%s\nstderr %q", code, out, errOut)
	}
}
