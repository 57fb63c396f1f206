package install

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
)

// images builds the BIOS core image and reads boot.img once per test
// binary: grub-mkimage takes a tenth of a second.
var images = struct {
	once       sync.Once
	core, boot []byte
	err        error
}{}

func biosImages(t *testing.T) (core, bootImg []byte) {
	t.Helper()
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	images.once.Do(func() {
		images.core, images.err = BuildImage(context.Background(), ImageSpec{Platform: PlatformBIOS})
		if images.err == nil {
			images.boot, images.err = ReadBootImage("")
		}
	})
	if images.err != nil {
		t.Fatalf("%v (run make deps)", images.err)
	}
	return images.core, images.boot
}

func TestBuildImage(t *testing.T) {
	core, _ := biosImages(t)
	if n := (len(core) + 511) / 512; n > maxCoreSectors || n > int(disk.BIOSBootSize/512) {
		t.Errorf("the core image is %d sectors: over %d, or over the BIOS boot partition", n, maxCoreSectors)
	}
	t.Logf("i386-pc core image: %d bytes (%d sectors)", len(core), (len(core)+511)/512)
	// grub-mkimage sets the first blocklist's length to the sectors after
	// the first; its start is diskboot.img's default, sector 2.
	b := core[firstBlocklist:]
	if start, n := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint16(b[8:]); start != 2 || int(n) != (len(core)+511)/512-1 {
		t.Errorf("grub-mkimage's blocklist: start %d, %d sectors; want 2, %d", start, n, (len(core)+511)/512-1)
	}
	efi, err := BuildImage(context.Background(), ImageSpec{Platform: PlatformEFI})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("x86_64-efi image: %d bytes", len(efi))
	if !bytes.Contains(efi, []byte(EFIPrefix+"\x00")) {
		t.Errorf("the EFI image does not hold its prefix %q", EFIPrefix)
	}
	for _, p := range []string{PlatformBIOS, PlatformEFI} {
		for _, m := range ImageModules(p) {
			if _, err := os.Stat(filepath.Join(grubtest.Lib, p, m+".mod")); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		}
		if !slices.Contains(ImageModules(p), "normal") || !slices.Contains(ImageModules(p), "part_gpt") {
			t.Errorf("%s: no normal or part_gpt in %q", p, ImageModules(p))
		}
		// regexp would expand wildcards in the kernel command line's
		// words (package grub's TestEmu).
		if slices.Contains(ImageModules(p), "regexp") {
			t.Errorf("%s: regexp in %q", p, ImageModules(p))
		}
	}
}

func TestBuildImageRefuses(t *testing.T) {
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		spec ImageSpec
		want string
	}{
		{"no grub-mkimage", ImageSpec{Platform: PlatformBIOS, Mkimage: "stagehand-no-such-grub-mkimage"}, "stagehand-no-such-grub-mkimage is missing: install Debian package grub-common"},
		{"no i386-pc modules", ImageSpec{Platform: PlatformBIOS, Dir: empty}, "GRUB's i386-pc files are missing"},
		{"no i386-pc modules package", ImageSpec{Platform: PlatformBIOS, Dir: empty}, "install Debian package grub-pc-bin"},
		{"no x86_64-efi modules", ImageSpec{Platform: PlatformEFI, Dir: empty}, "install Debian package grub-efi-amd64-bin"},
		{"module not stock", ImageSpec{Platform: PlatformBIOS, Modules: []string{"normal", "gptprio"}}, "module gptprio is not in /usr/lib/grub/i386-pc"},
		{"module path", ImageSpec{Platform: PlatformEFI, Modules: []string{"../i386-pc/biosdisk"}}, "is not a module name"},
		{"platform", ImageSpec{Platform: "arm64-efi"}, `platform "arm64-efi" is neither`},
		{"prefix with a blank", ImageSpec{Platform: PlatformEFI, Prefix: "/my grub"}, "holds blanks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := BuildImage(context.Background(), tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BuildImage = %d bytes, %v; want an error saying %q", len(img), err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("the error spans lines: %q", err)
			}
		})
	}
	t.Run("PATH", func(t *testing.T) {
		t.Setenv("PATH", empty)
		_, err := BuildImage(context.Background(), ImageSpec{Platform: PlatformEFI})
		if err == nil || !strings.Contains(err.Error(), "grub-mkimage is missing: install Debian package grub-common") {
			t.Fatalf("BuildImage without grub-mkimage in PATH = %v", err)
		}
	})
}

// journal is a BIOSDevice over a file that records its writes and syncs.
type journal struct {
	*os.File
	ops []string
}

func (j *journal) WriteAt(p []byte, off int64) (int, error) {
	j.ops = append(j.ops, fmt.Sprintf("write %d+%d", off, len(p)))
	return j.File.WriteAt(p, off)
}

func (j *journal) Sync() error {
	j.ops = append(j.ops, "sync")
	return j.File.Sync()
}

// newBIOSDisk creates a disk image with the default layout and a BIOS boot
// partition, and returns it with that partition and its first MiB (the
// protective MBR and the primary GPT) as it is before GRUB.
func newBIOSDisk(t *testing.T) (img string, part disk.Partition, before []byte) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	l := disk.Layout{BIOSBoot: true}
	l.Size = l.MinSize()
	d, err := disk.Create(context.Background(), img, l)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(disk.LabelBIOS)
	if err != nil {
		t.Fatal(err)
	}
	if r.Index != 4 {
		t.Fatalf("the BIOS boot partition is partition %d, want 4 (after ESP, META, STAGE)", r.Index)
	}
	return img, r.Partition, readAt(t, img, 0, 1<<20)
}

func readAt(t *testing.T, img string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func openJournal(t *testing.T, img string) *journal {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &journal{File: f}
}

// TestBIOS installs GRUB on a disk image made by disk.Create and
// checks every byte grub-bios-setup would set, in the order that keeps the
// disk bootable, and that a second install writes nothing.
func TestBIOS(t *testing.T) {
	core, bootImg := biosImages(t)
	img, part, before := newBIOSDisk(t)
	j := openJournal(t, img)
	if err := BIOS(j, part, core, bootImg); err != nil {
		t.Fatal(err)
	}
	sectors := (len(core) + 511) / 512
	lba := uint64(part.Offset / 512)
	wantOps := []string{fmt.Sprintf("write %d+%d", part.Offset, sectors*512), "sync", "write 0+512", "sync"}
	if !slices.Equal(j.ops, wantOps) {
		t.Errorf("writes %q, want %q: the core image, synced, then the MBR", j.ops, wantOps)
	}

	mbr := readAt(t, img, 0, 512)
	// Kept from the disk: the BPB area, the disk signature, the partition
	// table (the protective MBR's 0xEE entry) and 0x55AA.
	if !bytes.Equal(mbr[0x1b8:], before[0x1b8:512]) || mbr[0x1be+4] != 0xee || mbr[510] != 0x55 || mbr[511] != 0xaa {
		t.Errorf("the MBR's partition table changed:\n% x\nwas\n% x", mbr[0x1b8:], before[0x1b8:512])
	}
	if !bytes.Equal(mbr[3:0x5a], before[3:0x5a]) {
		t.Error("the MBR's BPB area is not the disk's")
	}
	// From boot.img, patched.
	want := bytes.Clone(bootImg)
	copy(want[3:0x5a], before[3:0x5a])
	copy(want[0x1b8:], before[0x1b8:512])
	binary.LittleEndian.PutUint64(want[0x5c:], lba)
	want[0x64] = 0xff
	want[0x66], want[0x67] = 0x90, 0x90
	if !bytes.Equal(mbr, want) {
		t.Errorf("the MBR differs from boot.img patched:\n% x\nwant\n% x", mbr, want)
	}
	if got := binary.LittleEndian.Uint64(mbr[0x5c:]); got != lba {
		t.Errorf("kernel_sector = %d, want the BIOS boot partition's first LBA %d", got, lba)
	}
	if bootImg[0x66] != 0xeb {
		t.Error("BIOS changed the caller's boot.img")
	}
	// The rest of the first MiB (the primary GPT) is untouched.
	if got := readAt(t, img, 512, 1<<20-512); !bytes.Equal(got, before[512:]) {
		t.Error("the primary GPT changed")
	}

	// The core image, its first sector's blocklist patched, then zeros to
	// the end of its last sector.
	onDisk := readAt(t, img, part.Offset, sectors*512)
	first := onDisk[:512]
	bl := first[512-12:]
	if start, n, seg := binary.LittleEndian.Uint64(bl), binary.LittleEndian.Uint16(bl[8:]), binary.LittleEndian.Uint16(bl[10:]); start != lba+1 || int(n) != sectors-1 || seg != 0x820 {
		t.Errorf("blocklist: start %d, %d sectors, segment %#x; want %d, %d, 0x820", start, n, seg, lba+1, sectors-1)
	}
	if term := first[512-24 : 512-12]; !bytes.Equal(term, make([]byte, 12)) {
		t.Errorf("the blocklist after the first is % x, not a terminator", term)
	}
	if !bytes.Equal(first[:512-24], core[:512-24]) {
		t.Error("diskboot's code in the core image's first sector changed")
	}
	if !bytes.Equal(onDisk[512:len(core)], core[512:]) {
		t.Error("the core image's sectors after the first are not the core image")
	}
	if !bytes.Equal(onDisk[len(core):], make([]byte, sectors*512-len(core))) {
		t.Error("the core image's last sector is not padded with zeros")
	}
	if core[512-12+8] == 0 || binary.LittleEndian.Uint64(core[512-12:]) != 2 {
		t.Error("BIOS changed the caller's core image")
	}

	// The GPT reads as it did.
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if r, err := d.Find(disk.LabelBIOS); err != nil || r.Partition != part {
		t.Errorf("after BIOS, Find(LabelBIOS) = %+v, %v; want %+v", r, err, part)
	}

	// Again: nothing to write.
	j.ops = nil
	if err := BIOS(j, part, core, bootImg); err != nil {
		t.Fatal(err)
	}
	if len(j.ops) != 0 {
		t.Errorf("a second install wrote %q", j.ops)
	}
}

// TestBIOSWhole installs through the disk's whole-disk region, as
// a caller holding the disk open does.
func TestBIOSWhole(t *testing.T) {
	core, bootImg := biosImages(t)
	img, part, _ := newBIOSDisk(t)
	d, err := disk.Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := BIOS(d.Whole(), part, core, bootImg); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(readAt(t, img, 0x5c, 8)); got != uint64(part.Offset/512) {
		t.Errorf("kernel_sector = %d, want %d", got, part.Offset/512)
	}
}

// TestBIOSRefuses: every refusal comes before the first write.
func TestBIOSRefuses(t *testing.T) {
	core, bootImg := biosImages(t)
	img, part, _ := newBIOSDisk(t)
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := d.Find(disk.LabelESP)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	noGPT := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(noGPT, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	small := part
	small.Size = 64 << 10
	shifted := part
	shifted.Offset += 512
	shifted.Size -= 512
	badBoot := bytes.Clone(bootImg)
	badBoot[0x66] = 0x90 // an MBR already patched is no boot.img
	for _, tc := range []struct {
		name       string
		img        string
		part       disk.Partition
		core, boot []byte
		want       string
	}{
		{"the ESP", img, esp.Partition, core, bootImg, "it is not a BIOS boot partition"},
		{"too small", img, small, core, bootImg, "does not fit in BIOS boot partition 4 (128 sectors)"},
		{"no such partition", img, shifted, core, bootImg, "the GPT has no partition starting at sector"},
		{"no GPT", noGPT, disk.Partition{Index: 1, Offset: 1 << 20, Size: 1 << 20}, core, bootImg, "no MBR signature"},
		{"short boot.img", img, part, core, bootImg[:446], "boot.img is 446 bytes"},
		{"not boot.img", img, part, core, badBoot, "boot.img is not GRUB 2's"},
		{"not a core image", img, part, make([]byte, 4096), bootImg, "not an i386-pc core image"},
		{"core image too large", img, part, append(bytes.Clone(core), make([]byte, maxCoreSectors*512)...), bootImg, "over the 454656 bytes grub-bios-setup embeds"},
		{"unaligned", img, disk.Partition{Index: 4, Offset: part.Offset + 1, Size: part.Size}, core, bootImg, "not in whole 512-byte sectors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := openJournal(t, tc.img)
			err := BIOS(j, tc.part, tc.core, tc.boot)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BIOS = %v, want an error saying %q", err, tc.want)
			}
			if len(j.ops) != 0 {
				t.Errorf("BIOS refused but wrote %q", j.ops)
			}
		})
	}
}

// TestEFI installs GRUB for UEFI on a FAT and reads it back.
func TestEFI(t *testing.T) {
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	vol := grubtest.FormatFAT(t, filepath.Join(t.TempDir(), "esp.img"), grubtest.FATSize)
	if err := EFI(context.Background(), vol, ImageSpec{}); err != nil {
		t.Fatal(err)
	}
	got, err := vol.ReadFile(EFIRemovablePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkEFIImage(got); err != nil {
		t.Fatalf("%s: %v", EFIRemovablePath, err)
	}
	names, err := vol.ReadDir("EFI/BOOT")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"BOOTX64.EFI"}) {
		t.Errorf("EFI/BOOT holds %q, want only BOOTX64.EFI", names)
	}
	// Again: the same image, nothing written (the ESP's file is as it was).
	w := &countingFS{FS: vol}
	if err := EFI(context.Background(), w, ImageSpec{}); err != nil {
		t.Fatal(err)
	}
	if w.writes != 0 {
		t.Errorf("a second install wrote %d files", w.writes)
	}
	// Over another loader.
	if err := vol.WriteFile(EFIRemovablePath, strings.NewReader("systemd-boot")); err != nil {
		t.Fatal(err)
	}
	if err := EFI(context.Background(), vol, ImageSpec{}); err != nil {
		t.Fatal(err)
	}
	if again, err := vol.ReadFile(EFIRemovablePath); err != nil || !bytes.Equal(again, got) {
		t.Errorf("EFI over another loader: %d bytes, %v", len(again), err)
	}
}

type countingFS struct {
	boot.FS
	writes int
}

func (c *countingFS) WriteFile(name string, r io.Reader) error {
	c.writes++
	return c.FS.WriteFile(name, r)
}

func TestEFIRefuses(t *testing.T) {
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	for _, tc := range []struct {
		name string
		spec ImageSpec
		want string
	}{
		{"no grub-mkimage", ImageSpec{Mkimage: "stagehand-no-such-grub-mkimage"}, "install Debian package grub-common"},
		{"no modules", ImageSpec{Dir: t.TempDir()}, "install Debian package grub-efi-amd64-bin"},
		{"BIOS", ImageSpec{Platform: PlatformBIOS}, "platform i386-pc is not x86_64-efi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol := grubtest.FormatFAT(t, filepath.Join(t.TempDir(), "esp.img"), grubtest.FATSize)
			err := EFI(context.Background(), vol, tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("EFI = %v, want an error saying %q", err, tc.want)
			}
			if names, err := vol.ReadDir(""); err != nil || len(names) != 0 {
				t.Errorf("the ESP holds %q (%v) after a refusal", names, err)
			}
			if _, err := vol.ReadFile(EFIRemovablePath); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s after a refusal: %v", EFIRemovablePath, err)
			}
		})
	}
}
