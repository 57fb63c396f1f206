package install

import (
	"bytes"
	"context"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/stagehand-dev/stagehand/grub"
)

// The GRUB platforms stagehand builds images for, as grub-mkimage -O and
// the module directories name them.
const (
	PlatformBIOS = "i386-pc"    // a PC BIOS: the core image BIOS writes
	PlatformEFI  = "x86_64-efi" // UEFI: the application EFI writes
)

// The prefixes the images are built with: where GRUB looks for grub.cfg
// ($prefix/grub.cfg, which the normal module runs) on the boot file
// system, the ESP, which is partition 1 of a stagehand disk.
const (
	// BIOSPrefix names partition 1 of the drive the BIOS booted from,
	// without the drive: GRUB 2.06's kernel puts the boot drive in front
	// of a device that starts with a comma (grub-core/kern/main.c,
	// grub_set_prefix_and_root), as grub-install does for a core image
	// that is not on a RAID or LVM (util/grub-install.c: "(,gpt1)").
	BIOSPrefix = "(,gpt1)/grub"
	// EFIPrefix names no device: GRUB EFI takes the partition it was
	// loaded from.
	EFIPrefix = "/grub"
)

// grubLibDir is where Debian's grub-pc-bin and grub-efi-amd64-bin put
// each platform's modules and images.
const grubLibDir = "/usr/lib/grub"

// maxCoreSectors bounds an i386-pc core image: grub-bios-setup embeds at
// most (0x78000 - GRUB_KERNEL_I386_PC_LINK_ADDR) / 512 sectors, and
// refuses a larger core image (util/setup.c, GRUB 2.06: maxsec, and "core.img
// won't fit").
const maxCoreSectors = (0x78000 - 0x9000) / grubSectorSize

// grubSectorSize is GRUB's disk sector, the unit of every block number it keeps.
const grubSectorSize = 512

// platformPackage names the Debian package that holds a platform's modules.
func platformPackage(platform string) string {
	if platform == PlatformBIOS {
		return "grub-pc-bin"
	}
	return "grub-efi-amd64-bin"
}

// ImageModules returns the modules an image for platform holds: what
// reaches grub.cfg (the BIOS disk driver; GRUB EFI's is in its kernel), the
// partition map and file system of the ESP, normal, which runs grub.cfg,
// configfile, and every module grub.cfg loads (grub.Modules). All are
// built in: insmod of a built-in module succeeds at once, and the boot
// file system needs no module directory.
func ImageModules(platform string) []string {
	var m []string
	if platform == PlatformBIOS {
		m = append(m, "biosdisk")
	}
	m = append(m, "part_gpt", "fat", "normal", "configfile")
	for _, x := range grub.Modules {
		if !slices.Contains(m, x) {
			m = append(m, x)
		}
	}
	return m
}

// ImageSpec says what BuildImage builds.
type ImageSpec struct {
	Platform string   // PlatformBIOS or PlatformEFI
	Prefix   string   // "": BIOSPrefix or EFIPrefix
	Modules  []string // nil: ImageModules(Platform)
	Dir      string   // the platform's modules; "": /usr/lib/grub/PLATFORM
	Mkimage  string   // the grub-mkimage binary; "": grub-mkimage in PATH
}

func (s ImageSpec) withDefaults() (ImageSpec, error) {
	switch s.Platform {
	case PlatformBIOS, PlatformEFI:
	default:
		return s, fmt.Errorf("GRUB image: platform %q is neither %s nor %s", s.Platform, PlatformBIOS, PlatformEFI)
	}
	if s.Prefix == "" {
		s.Prefix = BIOSPrefix
		if s.Platform == PlatformEFI {
			s.Prefix = EFIPrefix
		}
	}
	if s.Modules == nil {
		s.Modules = ImageModules(s.Platform)
	}
	if s.Dir == "" {
		s.Dir = filepath.Join(grubLibDir, s.Platform)
	}
	if s.Mkimage == "" {
		s.Mkimage = "grub-mkimage"
	}
	return s, nil
}

// BuildImage runs grub-mkimage -O PLATFORM -d DIR -p PREFIX MODULES... and
// returns the image, after checking it is one: an i386-pc core image that
// grub-bios-setup would embed (see checkCoreImage), or an x86_64 EFI
// application (PE32+, AMD64). It refuses, in one line saying what to
// install, when grub-mkimage, the platform's modules or one of the modules
// is missing.
func BuildImage(ctx context.Context, spec ImageSpec) ([]byte, error) {
	s, err := spec.withDefaults()
	if err != nil {
		return nil, err
	}
	mkimage, err := exec.LookPath(s.Mkimage)
	if err != nil {
		return nil, fmt.Errorf("GRUB image: %s is missing: install Debian package grub-common", s.Mkimage)
	}
	pkg := platformPackage(s.Platform)
	need := []string{"moddep.lst", "kernel.img"}
	if s.Platform == PlatformBIOS {
		need = append(need, "diskboot.img", "lzma_decompress.img")
	}
	for _, f := range need {
		if _, err := os.Stat(filepath.Join(s.Dir, f)); err != nil {
			return nil, fmt.Errorf("GRUB image: GRUB's %s files are missing (%v): install Debian package %s", s.Platform, err, pkg)
		}
	}
	if len(s.Modules) == 0 {
		return nil, fmt.Errorf("GRUB image: no modules given")
	}
	for _, m := range s.Modules {
		if m == "" || strings.ContainsAny(m, "/. \t\n") {
			return nil, fmt.Errorf("GRUB image: %q is not a module name", m)
		}
		if _, err := os.Stat(filepath.Join(s.Dir, m+".mod")); err != nil {
			return nil, fmt.Errorf("GRUB image: module %s is not in %s: it is no stock %s module of Debian package %s", m, s.Dir, s.Platform, pkg)
		}
	}
	if s.Prefix == "" || strings.ContainsAny(s.Prefix, " \t\n") {
		return nil, fmt.Errorf("GRUB image: prefix %q is empty or holds blanks", s.Prefix)
	}
	tmp, err := os.MkdirTemp("", "stagehand-grub-mkimage-")
	if err != nil {
		return nil, fmt.Errorf("GRUB image: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "image")
	args := append([]string{"-O", s.Platform, "-d", s.Dir, "-p", s.Prefix, "-o", out}, s.Modules...)
	cmd := exec.CommandContext(ctx, mkimage, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("GRUB image: %s %s: %v: %s", mkimage, strings.Join(args, " "), err, mkimageOutput(b))
	}
	img, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("GRUB image: reading what grub-mkimage wrote: %w", err)
	}
	if s.Platform == PlatformBIOS {
		diskboot, err := os.ReadFile(filepath.Join(s.Dir, "diskboot.img"))
		if err != nil {
			return nil, fmt.Errorf("GRUB image: %w: install Debian package %s", err, pkg)
		}
		if err := checkCoreImage(img); err != nil {
			return nil, fmt.Errorf("GRUB image: grub-mkimage made %w", err)
		}
		// grub-mkimage writes diskboot.img first, setting only its
		// first blocklist's length (util/mkimage.c).
		if len(diskboot) != grubSectorSize || !bytes.Equal(img[:blocklistStart], diskboot[:blocklistStart]) {
			return nil, fmt.Errorf("GRUB image: the core image grub-mkimage made does not start with %s", filepath.Join(s.Dir, "diskboot.img"))
		}
		return img, nil
	}
	if err := checkEFIImage(img); err != nil {
		return nil, fmt.Errorf("GRUB image: grub-mkimage made %w", err)
	}
	return img, nil
}

// mkimageOutput makes a tool's output fit an error message.
func mkimageOutput(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// checkEFIImage checks that img is an x86_64 EFI application: PE32+,
// machine AMD64, subsystem EFI application.
func checkEFIImage(img []byte) error {
	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		return fmt.Errorf("no PE image: %w", err)
	}
	defer f.Close()
	if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
		return fmt.Errorf("a PE image for machine %#04x, not AMD64 (%#04x)", f.Machine, pe.IMAGE_FILE_MACHINE_AMD64)
	}
	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok {
		return errors.New("a PE image that is not PE32+")
	}
	if oh.Subsystem != pe.IMAGE_SUBSYSTEM_EFI_APPLICATION {
		return fmt.Errorf("a PE image of subsystem %d, not an EFI application (%d)", oh.Subsystem, pe.IMAGE_SUBSYSTEM_EFI_APPLICATION)
	}
	return nil
}

// The i386-pc core image, as GRUB 2.06 lays it out: diskboot.img's sector,
// whose blocklists (struct grub_pc_bios_boot_blocklist: start LBA uint64,
// length uint16, segment uint16, little-endian) grow down from its end
// (include/grub/offsets.h; grub-core/boot/i386/pc/diskboot.S, firstlist),
// then the decompressor, whose header holds the length of what Reed-Solomon
// codes do not cover (GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH, 0x14 in
// the second sector; include/grub/offsets.h).
const (
	blocklistSize  = 12                               // GRUB_BOOT_MACHINE_LIST_SIZE
	blocklistStart = grubSectorSize - 2*blocklistSize // the second entry: the terminator BIOS writes
	firstBlocklist = grubSectorSize - blocklistSize   // diskboot.S: firstlist, .org 0x200 - GRUB_BOOT_MACHINE_LIST_SIZE
	kernelSegment  = 0x800 + grubSectorSize>>4        // GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20: where the second sector goes
	noRSLengthOff  = grubSectorSize + 0x14            // GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH
	minCoreSize    = 2 * grubSectorSize               // diskboot and the decompressor's header at least
)

// checkCoreImage checks what grub-bios-setup checks of a core image
// (util/setup.c): large enough, small enough to embed, a terminator among
// its blocklists, the first one loading at GRUB's segment, and a
// decompressor header of this GRUB version.
func checkCoreImage(core []byte) error {
	switch {
	case len(core) < minCoreSize:
		return fmt.Errorf("a core image of %d bytes: too small to be one", len(core))
	case (len(core)+grubSectorSize-1)/grubSectorSize > maxCoreSectors:
		return fmt.Errorf("a core image of %d bytes, over the %d bytes grub-bios-setup embeds: build it with fewer modules", len(core), maxCoreSectors*grubSectorSize)
	}
	if seg := binary.LittleEndian.Uint16(core[firstBlocklist+10:]); seg != kernelSegment {
		return fmt.Errorf("a core image whose first blocklist loads at segment %#x, not %#x: not an i386-pc core image", seg, kernelSegment)
	}
	terminated := false
	for off := firstBlocklist; off > 0; off -= blocklistSize {
		if binary.LittleEndian.Uint16(core[off+8:]) == 0 {
			terminated = true
			break
		}
	}
	if !terminated {
		return errors.New("a core image without a terminator among its blocklists")
	}
	if binary.LittleEndian.Uint16(core[noRSLengthOff:]) == 0xffff {
		return errors.New("a core image of another GRUB version (core.img version mismatch)")
	}
	return nil
}

// ReadBootImage reads GRUB's i386-pc boot.img (the MBR code BIOS
// writes) from dir ("": /usr/lib/grub/i386-pc) and checks it.
func ReadBootImage(dir string) ([]byte, error) {
	if dir == "" {
		dir = filepath.Join(grubLibDir, PlatformBIOS)
	}
	b, err := os.ReadFile(filepath.Join(dir, "boot.img"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("GRUB's boot.img is missing from %s: install Debian package %s", dir, platformPackage(PlatformBIOS))
	}
	if err != nil {
		return nil, fmt.Errorf("GRUB boot.img: %w", err)
	}
	if err := checkBootImage(b); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "boot.img"), err)
	}
	return b, nil
}
