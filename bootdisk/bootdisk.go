package bootdisk

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/grub/install"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// Config is what Init writes.
type Config struct {
	Layout    disk.Layout
	Kernel    string // slot A's kernel (bzImage)
	Initramfs string // slot A's initramfs
	UKI       string // slot A's unified kernel image, instead of Kernel and Initramfs
	Cmdline   string // kernel command line (stagehand.slot= is added)
	Version   string // slot A's OS version; "" for the kernel's release
	Force     bool   // overwrite a disk or image file that holds data
	LoaderEFI string // systemd-boot EFI binary; "" for systemdboot.EFIBinary
	// Bootloader is the one Init installs: SystemdBoot ("" too),
	// GRUBBIOS or GRUBEFI.
	Bootloader string
}

// The bootloaders Init installs. systemd-boot is the default and the one
// for Secure Boot and unified kernel images. GRUB 2 (Debian's stock 2.06,
// from grub-pc-bin or grub-efi-amd64-bin) is for machines that boot with
// it: grub-bios puts its core image in a BIOS boot partition and its boot
// code in the protective MBR, for a legacy BIOS; grub-efi puts a GRUB EFI
// image at the ESP's removable path, EFI/BOOT/BOOTX64.EFI, for UEFI
// without Secure Boot. Both keep grub.cfg, grubenv and the slots on the
// ESP's FAT, which GRUB reads and writes on either firmware.
const (
	SystemdBoot = "systemd-boot"
	GRUBBIOS    = "grub-bios"
	GRUBEFI     = "grub-efi"
)

// Bootloaders lists them, the default first.
var Bootloaders = []string{SystemdBoot, GRUBBIOS, GRUBEFI}

// Info says what Init made.
type Info struct {
	Path       string
	Size       int64
	Partitions []disk.Partition
	Version    string // slot A's version
	Kernel     string // slot A's kernel release
}

// Init makes path (an image file or a whole-disk block device) a
// bootable stagehand disk: the GPT layout, an ESP with the bootloader
// (cfg.Bootloader) and slot A installed and default, and a META recording
// slot A as good and active. Every input is checked, and GRUB's image
// built, before the disk is touched.
func Init(ctx context.Context, path string, cfg Config) (*Info, error) {
	l := cfg.Layout
	if cfg.Bootloader == "" {
		cfg.Bootloader = SystemdBoot
	}
	if !slices.Contains(Bootloaders, cfg.Bootloader) {
		return nil, fmt.Errorf("bootloader %q: want one of %s", cfg.Bootloader, strings.Join(Bootloaders, ", "))
	}
	grubOn := cfg.Bootloader != SystemdBoot
	if grubOn && cfg.UKI != "" {
		return nil, fmt.Errorf("%s: a unified kernel image needs systemd-boot (GRUB boots a kernel and an initramfs): use the default bootloader, or --kernel and --initramfs", cfg.Bootloader)
	}
	if grubOn && cfg.LoaderEFI != "" {
		return nil, fmt.Errorf("%s: a systemd-boot binary was given", cfg.Bootloader)
	}
	l.BIOSBoot = l.BIOSBoot || cfg.Bootloader == GRUBBIOS
	if l.ESPSize == 0 {
		l.ESPSize = disk.DefaultESPSize
	}
	if l.StageSize == 0 {
		l.StageSize = disk.DefaultStageSize
	}
	if strings.ContainsAny(cfg.Cmdline, "\r\n\x00") {
		return nil, fmt.Errorf("the kernel command line %q spans lines", cfg.Cmdline)
	}
	if strings.ContainsAny(cfg.Version, "\r\n\x00") {
		return nil, fmt.Errorf("the version %q spans lines", cfg.Version)
	}
	img, payload, release, err := slotInputs(cfg)
	if err != nil {
		return nil, err
	}
	defer img.close()
	var loaderSize int64
	loader := cfg.LoaderEFI
	var grubImage, grubBoot []byte // GRUB's image (core or EFI) and, on a BIOS, boot.img
	switch cfg.Bootloader {
	case SystemdBoot:
		if loader == "" {
			loader = systemdboot.EFIBinary
		}
		lst, err := os.Stat(loader)
		if err != nil {
			return nil, fmt.Errorf("systemd-boot: %w (Debian package systemd-boot-efi)", err)
		}
		loaderSize = lst.Size()
	case GRUBBIOS:
		spec := install.ImageSpec{Platform: install.PlatformBIOS}
		if grubImage, err = install.BuildImage(ctx, spec); err != nil {
			return nil, err
		}
		if grubBoot, err = install.ReadBootImage(""); err != nil {
			return nil, err
		}
	case GRUBEFI:
		if grubImage, err = install.BuildImage(ctx, install.ImageSpec{Platform: install.PlatformEFI}); err != nil {
			return nil, err
		}
		loaderSize = int64(len(grubImage))
	}
	// Both slots and two copies of the loader must fit on the ESP, with
	// room for FAT's own structures.
	if need := 2*payload + 2*loaderSize + 8<<20; need > l.ESPSize {
		return nil, fmt.Errorf("kernel and initramfs (%d MiB) are too large for a %d MiB ESP holding two slots: give a larger ESP",
			payload>>20, l.ESPSize>>20)
	}
	if 2*payload > l.StageSize {
		return nil, fmt.Errorf("STAGE of %d MiB is less than twice the payload of %d MiB (kernel and initramfs): give a larger STAGE",
			l.StageSize>>20, payload>>20)
	}
	version := cfg.Version
	if version == "" {
		version = img.Version
	}
	if version == "" {
		version = release
	}
	var opts []disk.CreateOption
	if cfg.Force {
		opts = append(opts, disk.WithForce())
	}

	d, err := disk.Create(ctx, path, l, opts...)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	espR, err := d.Find(disk.LabelESP)
	if err != nil {
		return nil, err
	}
	esp, err := fat.Format(espR, espR.Size, boot.ESPLabel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", espR.Name(), err)
	}
	var bl boot.Loader
	if grubOn {
		// No running command line to pass on: this disk has not booted.
		bl = grub.New(esp, grub.WithCmdline(""))
		if cfg.Bootloader == GRUBEFI {
			if err := install.EFI(ctx, esp, install.ImageSpec{Platform: install.PlatformEFI}); err != nil {
				return nil, fmt.Errorf("%s: %w", espR.Name(), err)
			}
		}
	} else {
		bl = systemdboot.New(esp, systemdboot.WithLoaderEFI(loader))
	}
	img.Image.Version = version
	if err := installSlotA(ctx, bl, esp, img.Image); err != nil {
		return nil, fmt.Errorf("%s: %w", espR.Name(), err)
	}
	if cfg.Bootloader == GRUBBIOS {
		// The boot code last: the MBR is what makes the disk boot GRUB,
		// once everything GRUB reads is on the (synced) ESP.
		biosR, err := d.Find(disk.LabelBIOS)
		if err != nil {
			return nil, err
		}
		if err := install.BIOS(d.Whole(), biosR.Partition, grubImage, grubBoot); err != nil {
			return nil, err
		}
	}
	// META last: it says slot A is good once slot A is written.
	metaR, err := d.META()
	if err != nil {
		return nil, err
	}
	store, err := meta.Format(metaR, metaR.Name())
	if err != nil {
		return nil, err
	}
	if err := recordSlotA(store, version, "disk initialized with slot a ("+version+")"); err != nil {
		return nil, err
	}
	if err := d.RereadPartitions(); err != nil {
		return nil, fmt.Errorf("the disk is written, but the kernel kept the old partition table: %w; run `partprobe %s`", err, path)
	}
	return &Info{Path: path, Size: d.Size(), Partitions: d.Partitions(), Version: version, Kernel: release}, nil
}

// installSlotA installs the bootloader's own files and slot a on esp, makes
// a the default and syncs esp: everything the loader reads, before what
// makes the firmware start it.
func installSlotA(ctx context.Context, bl boot.Loader, esp boot.FS, img boot.Image) error {
	if err := bl.InstallLoader(ctx); err != nil {
		return err
	}
	if err := bl.InstallSlot(ctx, meta.SlotA, img); err != nil {
		return err
	}
	if err := bl.SetDefault(ctx, meta.SlotA); err != nil {
		return err
	}
	return esp.Sync()
}

// recordSlotA commits to META that slot a, holding version, is good,
// active and the bootloader's default (the ESP was synced with it before),
// with reason as the transition's.
func recordSlotA(store *meta.Store, version, reason string) error {
	return store.Update(func(b *meta.Block) error {
		if err := b.SetSlots(&meta.Slots{
			Phase:         meta.PhaseIdle,
			Active:        meta.SlotA,
			A:             meta.SlotState{State: "good", Version: version},
			LoaderDefault: meta.SlotA,
		}); err != nil {
			return err
		}
		return b.AddTransition(meta.Transition{Time: time.Now().UTC(), To: meta.PhaseIdle, Slot: meta.SlotA, Reason: reason})
	})
}

// diskImage is slot A's image with the files it reads from.
type diskImage struct {
	boot.Image
	files []*os.File
}

func (d *diskImage) close() {
	for _, f := range d.files {
		f.Close()
	}
}

// slotInputs opens slot A's files: a UKI, or a kernel and an initramfs.
// It returns their size and the kernel's release.
func slotInputs(cfg Config) (*diskImage, int64, string, error) {
	d := &diskImage{}
	open := func(what, p string) (*os.File, int64, error) {
		f, err := os.Open(p)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", what, err)
		}
		d.files = append(d.files, f)
		st, err := f.Stat()
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", what, err)
		}
		if !st.Mode().IsRegular() {
			return nil, 0, fmt.Errorf("%s %s must be a regular file", what, p)
		}
		return f, st.Size(), nil
	}
	fail := func(err error) (*diskImage, int64, string, error) { d.close(); return nil, 0, "", err }
	if cfg.UKI != "" {
		if cfg.Kernel != "" || cfg.Initramfs != "" {
			return fail(fmt.Errorf("give a UKI or a kernel and an initramfs, not both"))
		}
		f, size, err := open("UKI", cfg.UKI)
		if err != nil {
			return fail(err)
		}
		u, err := boot.CheckUKI(f, size)
		if err != nil {
			return fail(fmt.Errorf("UKI %s: %w", cfg.UKI, err))
		}
		release, err := boot.KernelRelease(u.Kernel())
		if err != nil {
			return fail(fmt.Errorf("UKI %s: %w", cfg.UKI, err))
		}
		d.Image = boot.Image{UKI: io.NewSectionReader(f, 0, size), Version: u.Version()}
		return d, size, release, nil
	}
	kf, ksize, err := open("kernel", cfg.Kernel)
	if err != nil {
		return fail(err)
	}
	release, err := boot.KernelRelease(kf)
	if err != nil {
		return fail(fmt.Errorf("kernel %s: %w", cfg.Kernel, err))
	}
	inf, isize, err := open("initramfs", cfg.Initramfs)
	if err != nil {
		return fail(err)
	}
	d.Image = boot.Image{Kernel: kf, Initramfs: inf, Cmdline: cfg.Cmdline}
	return d, ksize + isize, release, nil
}
