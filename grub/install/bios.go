package install

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/stagehand-dev/stagehand/disk"
)

// BIOSDevice is the whole disk BIOS writes: an image file or block
// device (*os.File), or (*disk.Disk).Whole().
type BIOSDevice interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Offsets in GRUB 2.06's boot.img, the MBR code (include/grub/i386/pc/boot.h;
// grub-core/boot/i386/pc/boot.S).
const (
	bootBPBStart     = 0x3   // GRUB_BOOT_MACHINE_BPB_START
	bootBPBEnd       = 0x5a  // GRUB_BOOT_MACHINE_BPB_END
	bootKernelSector = 0x5c  // GRUB_BOOT_MACHINE_KERNEL_SECTOR: the core image's first LBA, uint64
	bootBootDrive    = 0x64  // GRUB_BOOT_MACHINE_BOOT_DRIVE: 0xff, the drive the BIOS booted
	bootDriveCheck   = 0x66  // GRUB_BOOT_MACHINE_DRIVE_CHECK: a 2-byte jmp over the boot drive check
	bootAfterBPB     = 0x65  // boot.S: after_BPB, where the jmp at byte 0 goes
	bootNTMagic      = 0x1b8 // GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC: disk signature, then the partition table
	bootPartEnd      = 0x1fe // GRUB_BOOT_MACHINE_PART_END: the 0x55AA signature
)

// checkBootImage checks that b is GRUB 2's boot.img, whose fixed offsets
// BIOS patches: one sector ending in 0x55AA that jumps over its
// BIOS parameter block to after_BPB, with the drive check's jmp at
// GRUB_BOOT_MACHINE_DRIVE_CHECK.
func checkBootImage(b []byte) error {
	switch {
	case len(b) != grubSectorSize:
		return fmt.Errorf("boot.img is %d bytes, not %d", len(b), grubSectorSize)
	case b[bootPartEnd] != 0x55 || b[bootPartEnd+1] != 0xaa:
		return errors.New("boot.img does not end in the boot signature 0x55AA")
	case b[0] != 0xeb || 2+int(b[1]) != bootAfterBPB || b[bootDriveCheck] != 0xeb:
		return errors.New("boot.img is not GRUB 2's: no jmp to after_BPB at 0x65, or no drive check jmp at 0x66")
	}
	return nil
}

// biosBootType is the BIOS boot partition's GPT type,
// 21686148-6449-6E6F-744E-656564454649, as the GPT stores it.
var biosBootType = []byte("Hah!IdontNeedEFI")

// BIOS makes dev, a GPT disk with 512-byte sectors, boot GRUB from a
// PC BIOS, as grub-bios-setup (util/setup.c of GRUB 2.06) does for a GPT
// disk with a BIOS boot partition, without Reed-Solomon codes
// (grub-install --no-rs-codes):
//
//  1. core (BuildImage for PlatformBIOS) goes at the first sector of part,
//     which must be the GPT's BIOS boot partition and hold it, with the
//     blocklist of its first sector (diskboot.img's) set to load the rest
//     from the following sectors, then is synced and read back;
//  2. then the MBR: bootImg (ReadBootImage) with the disk's own BIOS
//     parameter block area and its disk signature, partition table and
//     0x55AA kept, kernel_sector set to the core image's first LBA,
//     boot_drive 0xff (the drive the BIOS booted) and the boot drive check
//     of a hard disk enabled, then synced.
//
// The MBR is what makes the disk boot GRUB, and it is written last: a cut
// before it leaves the MBR as it was, so a disk that did not boot GRUB
// boots as it did. (A disk whose MBR already loads a core image from part
// has that core image rewritten in place: there is one BIOS boot partition,
// and no second copy to fall back to.) Everything is checked before the
// first write, so an error leaves the disk unchanged unless a write or
// sync fails. What is on the disk already is not written again.
func BIOS(dev BIOSDevice, part disk.Partition, core, bootImg []byte) error {
	if err := checkBootImage(bootImg); err != nil {
		return fmt.Errorf("installing GRUB for BIOS: %w", err)
	}
	if err := checkCoreImage(core); err != nil {
		return fmt.Errorf("installing GRUB for BIOS: %w", err)
	}
	if part.Offset <= 0 || part.Offset%grubSectorSize != 0 || part.Size <= 0 || part.Size%grubSectorSize != 0 {
		return fmt.Errorf("installing GRUB for BIOS: partition %d at byte %d, %d bytes, is not in whole 512-byte sectors", part.Index, part.Offset, part.Size)
	}
	start, nsec := uint64(part.Offset/grubSectorSize), uint64(part.Size/grubSectorSize)
	coreSectors := uint64(len(core)+grubSectorSize-1) / grubSectorSize
	if coreSectors > nsec {
		return fmt.Errorf("installing GRUB for BIOS: the core image (%d sectors) does not fit in BIOS boot partition %d (%d sectors): give it %d KiB or more",
			coreSectors, part.Index, nsec, (coreSectors+1)/2)
	}
	mbr := make([]byte, grubSectorSize)
	if _, err := dev.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("installing GRUB for BIOS: reading the MBR: %w", err)
	}
	if err := checkBIOSBootPartition(dev, mbr, start, nsec); err != nil {
		return fmt.Errorf("installing GRUB for BIOS in partition %d: %w", part.Index, err)
	}

	img := make([]byte, coreSectors*grubSectorSize) // the last sector padded with zeros
	copy(img, core)
	setBlocklist(img, start, coreSectors)
	newMBR := mbrWithBootImage(bootImg, mbr, start)

	old := make([]byte, len(img))
	if _, err := dev.ReadAt(old, part.Offset); err != nil {
		return fmt.Errorf("installing GRUB for BIOS: reading partition %d: %w", part.Index, err)
	}
	if !bytes.Equal(old, img) {
		if _, err := dev.WriteAt(img, part.Offset); err != nil {
			return fmt.Errorf("installing GRUB for BIOS: writing the core image to partition %d: %w", part.Index, err)
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("installing GRUB for BIOS: writing the core image to partition %d: %w", part.Index, err)
		}
		if _, err := dev.ReadAt(old, part.Offset); err != nil {
			return fmt.Errorf("installing GRUB for BIOS: reading the core image back: %w", err)
		}
		if !bytes.Equal(old, img) {
			return fmt.Errorf("installing GRUB for BIOS: the core image read back from partition %d differs from what was written; the MBR is left as it was", part.Index)
		}
	}
	if !bytes.Equal(mbr, newMBR) {
		if _, err := dev.WriteAt(newMBR, 0); err != nil {
			return fmt.Errorf("installing GRUB for BIOS: writing the MBR: %w", err)
		}
		if err := dev.Sync(); err != nil {
			return fmt.Errorf("installing GRUB for BIOS: writing the MBR: %w", err)
		}
	}
	return nil
}

// setBlocklist does to the core image's first sector what grub-bios-setup
// does for a core image in consecutive sectors from start (util/setup.c:
// "Clean out the blocklists", save_blocklists, "Make sure that the last
// blocklist is a terminator"): the first sector is the one boot.img loads;
// the first blocklist loads the other sectors, from start+1, at segment
// 0x820; the next one is the terminator. img holds whole sectors.
func setBlocklist(img []byte, start, sectors uint64) {
	for off := firstBlocklist; off > 0 && binary.LittleEndian.Uint16(img[off+8:]) != 0; off -= blocklistSize {
		clear(img[off : off+blocklistSize])
	}
	if sectors > 1 {
		b := img[firstBlocklist:]
		binary.LittleEndian.PutUint64(b[0:], start+1)
		binary.LittleEndian.PutUint16(b[8:], uint16(sectors-1))
		binary.LittleEndian.PutUint16(b[10:], kernelSegment)
	}
	clear(img[blocklistStart:firstBlocklist])
}

// mbrWithBootImage is the MBR grub-bios-setup writes: boot.img with the disk's
// BIOS parameter block area, disk signature and partition table copied
// from the sector now there (util/setup.c: "Copy the possible DOS BPB",
// "Copy the partition table"), the boot drive check of a hard disk enabled
// ("Replace the jmp (2 bytes) with double nop's"), and boot_drive and
// kernel_sector set (write_rootdev).
func mbrWithBootImage(bootImg, old []byte, coreLBA uint64) []byte {
	b := bytes.Clone(bootImg)
	copy(b[bootBPBStart:bootBPBEnd], old[bootBPBStart:bootBPBEnd])
	b[bootDriveCheck], b[bootDriveCheck+1] = 0x90, 0x90
	b[bootBootDrive] = 0xff
	binary.LittleEndian.PutUint64(b[bootKernelSector:], coreLBA)
	copy(b[bootNTMagic:bootPartEnd], old[bootNTMagic:bootPartEnd])
	return b
}

// checkBIOSBootPartition checks that the disk has a protective MBR
// (mbr, its sector 0) and a valid primary GPT with a BIOS boot partition
// of exactly the sectors [start, start+n).
func checkBIOSBootPartition(dev io.ReaderAt, mbr []byte, start, n uint64) error {
	if mbr[bootPartEnd] != 0x55 || mbr[bootPartEnd+1] != 0xaa {
		return errors.New("sector 0 has no MBR signature 0x55AA: the disk has no GPT; create the layout with `stager disk init`")
	}
	protective := false
	for i := 0; i < 4; i++ {
		if mbr[0x1be+16*i+4] == 0xee {
			protective = true
		}
	}
	if !protective {
		return errors.New("sector 0 is no protective MBR (no partition of type 0xEE): the disk is not GPT with 512-byte sectors")
	}
	hdr := make([]byte, grubSectorSize)
	if _, err := dev.ReadAt(hdr, grubSectorSize); err != nil {
		return fmt.Errorf("reading the GPT header: %w", err)
	}
	if string(hdr[:8]) != "EFI PART" {
		return errors.New("no GPT header in sector 1: BIOS boot needs 512-byte sectors")
	}
	hsize := binary.LittleEndian.Uint32(hdr[12:])
	if hsize < 92 || hsize > grubSectorSize {
		return fmt.Errorf("the GPT header's size %d is invalid", hsize)
	}
	h := bytes.Clone(hdr[:hsize])
	clear(h[16:20])
	if crc32.ChecksumIEEE(h) != binary.LittleEndian.Uint32(hdr[16:]) {
		return errors.New("the primary GPT header's CRC is wrong: repair the GPT first")
	}
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:])
	count := binary.LittleEndian.Uint32(hdr[80:])
	esize := binary.LittleEndian.Uint32(hdr[84:])
	if esize < 128 || esize%8 != 0 || count == 0 || count > 1024 || uint64(count)*uint64(esize) > 1<<20 {
		return fmt.Errorf("the GPT's partition array (%d entries of %d bytes) is invalid", count, esize)
	}
	entries := make([]byte, int(count)*int(esize))
	if _, err := dev.ReadAt(entries, int64(entriesLBA)*grubSectorSize); err != nil {
		return fmt.Errorf("reading the GPT's partition array: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(hdr[88:]) {
		return errors.New("the GPT partition array's CRC is wrong: repair the GPT first")
	}
	for i := uint32(0); i < count; i++ {
		e := entries[i*esize:]
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if first != start {
			continue
		}
		if !bytes.Equal(e[:16], biosBootType) {
			return errors.New("it is not a BIOS boot partition (GPT type 21686148-6449-6E6F-744E-656564454649): create the layout with a BIOS boot partition")
		}
		if last != start+n-1 {
			return fmt.Errorf("the GPT gives it sectors %d to %d, not %d to %d", first, last, start, start+n-1)
		}
		return nil
	}
	return fmt.Errorf("the GPT has no partition starting at sector %d", start)
}
