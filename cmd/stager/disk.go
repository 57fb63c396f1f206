package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/stage"
)

func newDiskCmd() *cobra.Command {
	cmd := cli.GroupOnly(&cobra.Command{
		Use:   "disk",
		Short: "Make bootable stagehand disks",
	})
	cmd.AddCommand(newDiskInitCmd(), newDiskAdoptCmd())
	return cmd
}

func newDiskInitCmd() *cobra.Command {
	var (
		path                               string
		size, espSize, stageSize, rootSize string
		cfg                                bootdisk.Config
		install                            stage.Options
	)
	cmd := &cobra.Command{
		Use:   "init --disk FILE|DEV (--install REF | --kernel F --initramfs F | --uki F) [--size S]",
		Short: "Write the stagehand layout, a bootloader and slot A to a disk or image file",
		Long: `Write a GPT with the stagehand layout (EFI system partition, META of
exactly 1 MiB, STAGE, and optionally a root partition), install the bootloader
on the ESP with slot A as the default, and record slot A as good and active in
META.

--bootloader picks it:
  systemd-boot  UEFI (the default); the one for Secure Boot and for unified
                kernel images
  grub-bios     GRUB 2 for a legacy BIOS: its core image goes in a 1 MiB BIOS
                boot partition (the last), its boot code in the protective MBR
  grub-efi      GRUB 2 for UEFI without Secure Boot, at the ESP's removable
                path EFI/BOOT/BOOTX64.EFI
GRUB is Debian's stock 2.06 (packages grub-pc-bin or grub-efi-amd64-bin, and
grub-common for grub-mkimage); it keeps grub.cfg, grubenv and both slots on the
ESP's FAT and counts a trial's boots in grubenv (see docs/grub.md). Slot A is the given kernel, initramfs and command line, a
unified kernel image (--uki, a Type #2 entry), or those of an installer image (--install REF, pulled and checked as stager
--image does; --cmdline and --version override the image's).

An image file is created with --size (or keeps its size with --force); a
block device keeps its own size. A disk with a mounted partition is refused,
and so is a disk or file that holds data, unless --force is given.`,
		Example: `  stager disk init --disk disk.img --size 2G --kernel vmlinuz --initramfs initramfs.img --cmdline console=ttyS0 --version v1
  stager disk init --disk disk.img --size 2G --install 127.0.0.1:5000/stagehand/os:v1
  stager disk init --disk disk.img --size 2G --bootloader grub-bios --kernel vmlinuz --initramfs initramfs.img
  stager disk init --disk /dev/vdb --kernel vmlinuz --initramfs initramfs.img --force`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	f := cmd.Flags()
	f.StringVar(&path, "disk", "", "image file or whole-disk block device to write (required)")
	f.StringVar(&size, "size", "", "size of the image file (e.g. 2G, 1536M)")
	f.StringVar(&install.Image, "install", "", "installer image for slot A: REGISTRY/REPO[:TAG|@sha256:DIGEST], oci:DIR[:TAG] or docker-archive:FILE")
	f.BoolVar(&install.Insecure, "insecure", false, "with --install: talk plain HTTP to the registry")
	f.StringVar(&cfg.Kernel, "kernel", "", "slot A's kernel (or --install)")
	f.StringVar(&cfg.Initramfs, "initramfs", "", "slot A's initramfs (or --install)")
	f.StringVar(&cfg.UKI, "uki", "", "slot A's unified kernel image, instead of --kernel and --initramfs")
	f.StringVar(&cfg.Cmdline, "cmdline", "", "kernel command line (stagehand.slot=a is added)")
	f.StringVar(&cfg.Version, "version", "", "slot A's OS version (default: the kernel's release)")
	f.StringVar(&espSize, "esp-size", "300M", "size of the EFI system partition (at least 256M; above 260M FAT32 has 4 KiB clusters, and slots write faster)")
	f.StringVar(&stageSize, "stage-size", "512M", "size of STAGE (at least twice the largest payload)")
	f.StringVar(&rootSize, "root-size", "0", "size of a ROOT partition after STAGE (0: none)")
	f.BoolVar(&cfg.Force, "force", false, "overwrite a disk or image file that holds data")
	f.StringVar(&cfg.Bootloader, "bootloader", bootdisk.SystemdBoot, "the bootloader: "+strings.Join(bootdisk.Bootloaders, ", "))
	trust := cli.AddTrustFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if path == "" {
			return cli.Usage("--disk is required (see --help)")
		}
		files := cfg.Kernel != "" || cfg.Initramfs != ""
		if n := btoi(install.Image != "") + btoi(files) + btoi(cfg.UKI != ""); n != 1 || files && (cfg.Kernel == "" || cfg.Initramfs == "") {
			return cli.Usage("give one of --install REF, --uki FILE, or both --kernel and --initramfs (see --help)")
		}
		if !slices.Contains(bootdisk.Bootloaders, cfg.Bootloader) {
			return cli.Usage("--bootloader %q: want one of %s", cfg.Bootloader, strings.Join(bootdisk.Bootloaders, ", "))
		}
		if cfg.UKI != "" && cfg.Bootloader != bootdisk.SystemdBoot {
			return cli.Usage("--uki needs --bootloader systemd-boot: GRUB boots a kernel and an initramfs")
		}
		if install.Image != "" {
			if _, err := stage.ParseSource(install.Image, install.Insecure); err != nil {
				return cli.UsageError{Err: err}
			}
		}
		for _, s := range []struct {
			flag, v string
			dst     *int64
		}{{"--size", size, &cfg.Layout.Size}, {"--esp-size", espSize, &cfg.Layout.ESPSize},
			{"--stage-size", stageSize, &cfg.Layout.StageSize}, {"--root-size", rootSize, &cfg.Layout.RootSize}} {
			if s.v == "" {
				continue
			}
			n, err := parseSize(s.v)
			if err != nil {
				return cli.Usage("%s %q: %v", s.flag, s.v, err)
			}
			*s.dst = n
		}
		if install.Image != "" {
			var err error
			if install.VerifyKeys, install.Policy, err = trust(); err != nil {
				return err
			}
			dir, err := os.MkdirTemp("", "stagehand-install-*")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			bar := newProgress(cmd.ErrOrStderr(), "pulling")
			install.Progress = bar.update
			fetched, err := stage.Fetch(cmd.Context(), install, dir)
			bar.finish(err == nil)
			if err != nil {
				return err
			}
			cfg.Kernel, cfg.Initramfs = fetched.Files[payload.Kernel], fetched.Files[payload.Initramfs]
			if u, ok := fetched.Files[payload.UKI]; ok {
				cfg.Kernel, cfg.Initramfs, cfg.UKI = "", "", u
			}
			if cfg.Cmdline == "" && cfg.UKI == "" {
				cfg.Cmdline = readArtifact(fetched, payload.Cmdline)
			}
			if cfg.Version == "" {
				cfg.Version = readArtifact(fetched, payload.Version)
			}
		}
		info, err := bootdisk.Init(cmd.Context(), path, cfg)
		if err != nil {
			return err
		}
		var parts []string
		for _, p := range info.Partitions {
			parts = append(parts, fmt.Sprintf("%s %s", p.Label, sizeString(p.Size)))
		}
		fmt.Fprintf(cmd.OutOrStdout(), "initialized %s (%s: %s) with %s and slot a (version %s, kernel %s) as default\n",
			info.Path, sizeString(info.Size), strings.Join(parts, ", "), cfg.Bootloader, info.Version, info.Kernel)
		return nil
	}
	return cmd
}

func newDiskAdoptCmd() *cobra.Command {
	var (
		path, espSize, stageSize string
		cfg                      bootdisk.AdoptConfig
	)
	cmd := &cobra.Command{
		Use:   "adopt --disk FILE|DEV --bootloader grub-bios|grub-efi --kernel F --initramfs F [--cmdline C] [--version V]",
		Short: "Convert a GPT disk another tool made into a stagehand disk booted by GRUB, moving no partition",
		Long: `Convert a machine's disk, made by its distribution's installer or image (Debian,
Ubuntu, Flatcar, Talos), into a stagehand disk booted by GRUB, with the given
kernel and initramfs as slot a. No partition is moved or resized: each keeps its
place, type, GUID and name, and what stagehand lacks is added in the largest free
extent of the disk, 1 MiB aligned: META (1 MiB), STAGE (--stage-size; by default
512 MiB, or less if the free space holds less but twice the payload), an ESP
(--esp-size, FAT32) when the disk has no EFI system partition, and for
grub-bios a 1 MiB BIOS boot partition when it has none.

An ESP there already is reused when it is a FAT32 with room for two slots: its
files are kept, its GPT name becomes EFI (by which stagehand finds it). It must
not be mounted: unmount /boot/efi first. Other partitions may be mounted.

  grub-bios  GRUB's core image goes in the BIOS boot partition (replacing the
             one there), then its boot code in the MBR (the partition table kept)
  grub-efi   GRUB goes at the ESP's removable path EFI/BOOT/BOOTX64.EFI; no
             firmware variable is written: a machine with a boot entry for its
             distribution's loader must have stagehand's put first, with the
             efibootmgr command printed at the end

Then META records slot a as good and active. The machine's old GRUB
configuration (/boot/grub) is no longer used. Everything is checked before the
first write; --dry-run checks and prints the plan, and writes nothing. A disk
with an MBR partition table must be converted to GPT first (sgdisk -g). See
docs/grub.md, "Adopting a machine that boots GRUB".`,
		Example: `  stager disk adopt --disk /dev/sda --bootloader grub-bios --kernel /boot/vmlinuz-6.1.0-18-amd64 --initramfs slot-a.img --cmdline "root=UUID=… ro" --dry-run
  stager disk adopt --disk /dev/nvme0n1 --bootloader grub-efi --kernel vmlinuz --initramfs slot-a.img --cmdline "root=UUID=… ro"`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	f := cmd.Flags()
	f.StringVar(&path, "disk", "", "image file or whole-disk block device to convert (required)")
	f.StringVar(&cfg.Bootloader, "bootloader", "", "the bootloader: "+bootdisk.GRUBBIOS+" or "+bootdisk.GRUBEFI+" (required)")
	f.StringVar(&cfg.Kernel, "kernel", "", "slot a's kernel (required)")
	f.StringVar(&cfg.Initramfs, "initramfs", "", "slot a's initramfs (required)")
	f.StringVar(&cfg.Cmdline, "cmdline", "", "kernel command line (stagehand.slot=a is added)")
	f.StringVar(&cfg.Version, "version", "", "slot a's OS version (default: the kernel's release)")
	f.StringVar(&stageSize, "stage-size", "", "size of the new STAGE (default 512M, or less if the free space holds less; at least twice the payload)")
	f.StringVar(&espSize, "esp-size", "", "size of a new ESP, when the disk has none (default 300M, at least 256M)")
	f.BoolVar(&cfg.DryRun, "dry-run", false, "check everything and print the plan; write nothing")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		switch {
		case path == "":
			return cli.Usage("--disk is required (see --help)")
		case cfg.Bootloader == "":
			return cli.Usage("--bootloader is required: %s for a legacy BIOS, %s for UEFI", bootdisk.GRUBBIOS, bootdisk.GRUBEFI)
		case cfg.Bootloader != bootdisk.GRUBBIOS && cfg.Bootloader != bootdisk.GRUBEFI:
			return cli.Usage("--bootloader %q: adopt installs GRUB, %s or %s", cfg.Bootloader, bootdisk.GRUBBIOS, bootdisk.GRUBEFI)
		case cfg.Kernel == "" || cfg.Initramfs == "":
			return cli.Usage("give both --kernel and --initramfs (see --help)")
		}
		for _, s := range []struct {
			flag, v string
			dst     *int64
		}{{"--esp-size", espSize, &cfg.ESPSize}, {"--stage-size", stageSize, &cfg.StageSize}} {
			if s.v == "" {
				continue
			}
			n, err := parseSize(s.v)
			if err != nil {
				return cli.Usage("%s %q: %v", s.flag, s.v, err)
			}
			*s.dst = n
		}
		info, err := bootdisk.Adopt(cmd.Context(), path, cfg)
		if info == nil {
			return err
		}
		out := cmd.OutOrStdout()
		switch {
		case info.DryRun:
			fmt.Fprintf(out, "dry run, nothing written: adopting %s for %s with slot a (version %s, kernel %s) would\n", info.Path, info.Bootloader, info.Version, info.Kernel)
		default:
			fmt.Fprintf(out, "adopted %s for %s with slot a (version %s, kernel %s) as default; the old /boot/grub is no longer used:\n", info.Path, info.Bootloader, info.Version, info.Kernel)
		}
		for _, s := range info.Steps {
			fmt.Fprintf(out, "  %s\n", s)
		}
		if info.EFIBootEntry != "" {
			fmt.Fprintf(out, "no firmware variable is written: if this machine's firmware has a boot entry for its distribution's loader, put stagehand's first with\n  %s\n", info.EFIBootEntry)
		}
		return err
	}
	return cmd
}

// readArtifact returns a small text artifact of a fetched image, or "".
func readArtifact(f *stage.Fetched, name string) string {
	p, ok := f.Files[name]
	if !ok {
		return ""
	}
	b, err := os.ReadFile(p)
	if err != nil || len(b) > 4096 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// parseSize reads a size in bytes, or with a K, M, G or T suffix (powers
// of 1024, with or without "iB").
func parseSize(s string) (int64, error) {
	num := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	shift := 0
	if num != "" {
		switch num[len(num)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift > 0 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a size (use bytes, or a number with K, M, G or T)")
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("too large")
	}
	return n << shift, nil
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
