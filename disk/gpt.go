package disk

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"runtime"
	"slices"
	"strings"
	"unicode/utf16"
	"unsafe"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"
)

// GPT is a disk's GUID partition table as the bytes of its primary copy:
// read and checked by ReadGPT, changed in memory by Add and Rename, and
// written back, primary and backup, by WriteGPT. It is for changing a table
// another tool made (`stager disk adopt`) without changing anything else:
// every byte that neither Add nor Rename changes is written back as it was
// read (the other entries, name bytes after a name's end, the disk GUID,
// the usable range, the size and place of the entry array), and the MBR in
// sector 0 is not written at all.
//
// go-diskfs's gpt.Table, with which Create writes a new table, is not used
// for this: it re-encodes every entry (names through UTF-16 decoding and
// encoding), puts the primary entry array at LBA 2 and writes 128-byte
// entries whatever the table had, and rewrites the protective MBR.
type GPT struct {
	sector    int64  // the disk's logical sector size: the unit of every LBA
	lastLBA   uint64 // the disk's last sector, where the backup header lies
	header    []byte // the primary header's sector, as read
	hdrSize   int    // the header's own size, which its CRC covers
	entries   []byte // the entry array, as read and changed
	entrySize int
	arrayLBA  uint64 // the primary entry array's first sector
	// backupArrayLBA is the backup entry array's first sector: where the
	// backup header put it, or right before the backup header.
	backupArrayLBA          uint64
	firstUsable, lastUsable uint64
	// BackupDiffers tells that the backup GPT at the end of the disk was
	// not a copy of the primary (invalid, or other entries): WriteGPT
	// writes it anew from the primary, which is the table firmware and
	// kernel read.
	BackupDiffers bool
	// FromBackup tells that the primary GPT was invalid and the table was
	// read from the backup: WriteGPT writes the primary anew.
	FromBackup bool
}

// GPTEntry is a partition of a GPT, with what Partition leaves out.
type GPTEntry struct {
	Partition
	Type       string // partition type GUID, upper case (gpt.BIOSBoot, …)
	Attributes uint64
}

// Extent is a range of bytes of the disk.
type Extent struct{ Offset, Size int64 }

// The partition type GUIDs stagehand looks for, upper case as GPTEntry.Type
// has them.
const (
	TypeESP      = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" // EFI system partition (sgdisk EF00)
	TypeBIOSBoot = "21686148-6449-6E6F-744E-656564454649" // BIOS boot partition (sgdisk EF02)
	TypeLinux    = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" // Linux file system (sgdisk 8300), META's and STAGE's
)

// GPT header fields (UEFI 2.10, 5.3.2), byte offsets in the header sector.
const (
	gptSignature     = "EFI PART"
	gptRevision      = 0x00010000
	hdrRevision      = 8
	hdrSizeOff       = 12
	hdrCRC           = 16
	hdrMyLBA         = 24
	hdrAlternateLBA  = 32
	hdrFirstUsable   = 40
	hdrLastUsable    = 48
	hdrArrayLBA      = 72
	hdrEntryCount    = 80
	hdrEntrySize     = 84
	hdrArrayCRC      = 88
	minHdrSize       = 92
	minEntrySize     = 128
	maxArrayBytes    = 1 << 20 // far above the 16 KiB everyone writes
	entryNameOff     = 56      // the name: 36 UTF-16LE code units
	entryNameUnits   = 36
	entryTypeEnd     = 16
	entryGUIDEnd     = 32
	entryStartOff    = 32
	entryEndOff      = 40
	entryAttrOff     = 48
	mbrSignatureOff  = 510
	mbrPartitionsOff = 446
)

// ReadGPT reads the disk's GPT and checks it: a protective (or hybrid) MBR,
// a valid primary header and entry array (signature, revision, CRCs, the
// usable range and the array inside the disk and apart from each other),
// and the backup header at the disk's last sector. A backup that is not a
// copy of the primary is reported in BackupDiffers, not refused: the
// primary is what firmware and kernel read, and WriteGPT rewrites the
// backup from it. An invalid primary with a valid backup at the end of the
// disk (a write of the table cut short: WriteGPT writes the backup first)
// is read from the backup, as firmware and kernel read it, and reported in
// FromBackup: WriteGPT writes the primary anew. Nothing is written.
func (d *Disk) ReadGPT() (*GPT, error) {
	ss := int64(d.sectorSize)
	if ss < 512 || d.size < 3*ss {
		return nil, fmt.Errorf("%s: no GPT (sector size %d, %d bytes)", d.path, ss, d.size)
	}
	g := &GPT{sector: ss, lastLBA: uint64(d.size/ss) - 1}
	fail := func(format string, a ...any) (*GPT, error) {
		return nil, fmt.Errorf("%s: %s; repair the GPT first (sgdisk -v %s says what is wrong)", d.path, fmt.Sprintf(format, a...), d.path)
	}
	mbr := make([]byte, 512)
	if _, err := d.f.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("reading the MBR of %s: %w", d.path, err)
	}
	if !HasGPTMBR(mbr) {
		return fail("sector 0 is no protective MBR (no partition of type 0xEE)")
	}
	primary, perr := d.readGPTCopy(1, g.lastLBA)
	backup, berr := d.readGPTCopy(g.lastLBA, g.lastLBA)
	if perr != nil && (perr.io || berr != nil) {
		if perr.io {
			return nil, perr.err
		}
		return fail("the primary GPT %v, and the backup %v", perr.err, berr.err)
	}
	h, arrayLBA := primary.header, uint64(0)
	if perr == nil {
		if alt := le64(h, hdrAlternateLBA); alt != g.lastLBA {
			return nil, fmt.Errorf("%s: the backup GPT is at sector %d, not at the end of the disk (sector %d): the table was made for a disk of another size; move the backup to the end with `sgdisk -e %s` first",
				d.path, alt, g.lastLBA, d.path)
		}
		g.entries, arrayLBA = primary.entries, le64(h, hdrArrayLBA)
	} else {
		// The backup, as the primary it should have been: the primary's
		// array where its header (if whole) put it, else at LBA 2.
		g.FromBackup = true
		h = bytes.Clone(backup.header)
		binary.LittleEndian.PutUint64(h[hdrMyLBA:], 1)
		binary.LittleEndian.PutUint64(h[hdrAlternateLBA:], g.lastLBA)
		arrayLBA = 2
		if primary.header != nil && le32(primary.header, hdrEntryCount) == le32(h, hdrEntryCount) && le32(primary.header, hdrEntrySize) == le32(h, hdrEntrySize) {
			arrayLBA = le64(primary.header, hdrArrayLBA)
		}
		binary.LittleEndian.PutUint64(h[hdrArrayLBA:], arrayLBA)
		g.entries = backup.entries
	}
	g.header, g.hdrSize, g.arrayLBA = h, int(le32(h, hdrSizeOff)), arrayLBA
	g.entrySize = int(le32(h, hdrEntrySize))
	g.firstUsable, g.lastUsable = le64(h, hdrFirstUsable), le64(h, hdrLastUsable)
	arraySectors := uint64((int64(len(g.entries)) + ss - 1) / ss)
	switch {
	case g.firstUsable > g.lastUsable || g.lastUsable >= g.lastLBA:
		return fail("its usable sectors %d to %d are not inside the disk", g.firstUsable, g.lastUsable)
	case g.arrayLBA < 2 || g.arrayLBA+arraySectors > g.firstUsable:
		return fail("its entry array at sector %d lies outside sectors 2 to %d", g.arrayLBA, g.firstUsable-1)
	}

	// The backup: its array where its header says when the header is
	// valid, else right before it.
	g.backupArrayLBA = g.lastLBA - arraySectors
	g.BackupDiffers = true
	if berr == nil {
		bh := backup.header
		if lba := le64(bh, hdrArrayLBA); lba > g.lastUsable && lba+arraySectors <= g.lastLBA {
			g.backupArrayLBA = lba
		}
		g.BackupDiffers = !bytes.Equal(backup.entries, g.entries) ||
			!bytes.Equal(bh[hdrFirstUsable:hdrArrayLBA], h[hdrFirstUsable:hdrArrayLBA]) // usable range, disk GUID
	}
	if g.backupArrayLBA <= g.lastUsable {
		return fail("no room for the backup entry array between the last usable sector %d and the backup header", g.lastUsable)
	}
	for _, e := range g.Entries() {
		s, n := uint64(e.Offset/ss), uint64(e.Size/ss)
		if n == 0 || s < g.firstUsable || s+n-1 > g.lastUsable {
			return fail("partition %d (sectors %d to %d) lies outside the usable sectors %d to %d", e.Index, s, s+n-1, g.firstUsable, g.lastUsable)
		}
	}
	return g, nil
}

// gptCopy is one copy of a GPT, its header and entry array.
type gptCopy struct{ header, entries []byte }

// gptError says why a copy of the GPT is not read; io: the disk could
// not be read.
type gptError struct {
	err error
	io  bool
}

// readGPTCopy reads and checks the GPT header at LBA my and its entry
// array. On an error the header is returned when it was read whole (its
// own CRC right), for where its array lies.
func (d *Disk) readGPTCopy(my, lastLBA uint64) (gptCopy, *gptError) {
	ss := int64(d.sectorSize)
	var c gptCopy
	h := make([]byte, ss)
	if _, err := d.f.ReadAt(h, int64(my)*ss); err != nil {
		return c, &gptError{fmt.Errorf("reading the GPT header of %s at sector %d: %w", d.path, my, err), true}
	}
	if err := checkHeader(h, my); err != nil {
		return c, &gptError{err: fmt.Errorf("header %w", err)}
	}
	c.header = h
	count, esize := le32(h, hdrEntryCount), le32(h, hdrEntrySize)
	if esize < minEntrySize || esize%8 != 0 || count == 0 || uint64(count)*uint64(esize) > maxArrayBytes {
		return c, &gptError{err: fmt.Errorf("entry array (%d entries of %d bytes) is not one stagehand reads", count, esize)}
	}
	lba, n := le64(h, hdrArrayLBA), int64(count)*int64(esize)
	if lba < 2 || lba > lastLBA || int64(lastLBA-lba+1)*ss < n {
		return c, &gptError{err: fmt.Errorf("entry array at sector %d lies outside the disk", lba)}
	}
	c.entries = make([]byte, n)
	if _, err := d.f.ReadAt(c.entries, int64(lba)*ss); err != nil {
		return c, &gptError{fmt.Errorf("reading the GPT entries of %s: %w", d.path, err), true}
	}
	if crc32.ChecksumIEEE(c.entries) != le32(h, hdrArrayCRC) {
		return c, &gptError{err: errors.New("entry array has a wrong CRC")}
	}
	return c, nil
}

// HasGPTMBR tells whether mbr, a disk's sector 0, is a protective or hybrid
// MBR: the boot signature and a partition of type 0xEE.
func HasGPTMBR(mbr []byte) bool {
	if len(mbr) < 512 || mbr[mbrSignatureOff] != 0x55 || mbr[mbrSignatureOff+1] != 0xaa {
		return false
	}
	for i := 0; i < 4; i++ {
		if mbr[mbrPartitionsOff+16*i+4] == 0xee {
			return true
		}
	}
	return false
}

// HasMBRPartitions tells whether mbr, a disk's sector 0, is an MBR with
// partitions and none of type 0xEE: an MBR-partitioned disk, not a GPT one.
func HasMBRPartitions(mbr []byte) bool {
	if len(mbr) < 512 || mbr[mbrSignatureOff] != 0x55 || mbr[mbrSignatureOff+1] != 0xaa || HasGPTMBR(mbr) {
		return false
	}
	for i := 0; i < 4; i++ {
		e := mbr[mbrPartitionsOff+16*i:]
		if e[4] != 0 && le32(e, 12) != 0 {
			return true
		}
	}
	return false
}

// checkHeader checks a GPT header sector read at LBA my: signature,
// revision 1.0, a header size from 92 bytes to the sector, its CRC, and
// its own LBA.
func checkHeader(h []byte, my uint64) error {
	if string(h[:8]) != gptSignature {
		return errors.New("has no signature \"EFI PART\"")
	}
	if r := le32(h, hdrRevision); r != gptRevision {
		return fmt.Errorf("has revision %#x, not 1.0", r)
	}
	n := int(le32(h, hdrSizeOff))
	if n < minHdrSize || n > len(h) {
		return fmt.Errorf("has the invalid size %d", n)
	}
	if headerCRC(h[:n]) != le32(h, hdrCRC) {
		return errors.New("has a wrong CRC")
	}
	if l := le64(h, hdrMyLBA); l != my {
		return fmt.Errorf("says it is at sector %d, but lies at sector %d", l, my)
	}
	return nil
}

// headerCRC is the CRC32 of a header with its CRC field taken as zero.
func headerCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	clear(c[hdrCRC : hdrCRC+4])
	return crc32.ChecksumIEEE(c)
}

func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func le64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

// entry returns entry i (0-based) of the array.
func (g *GPT) entry(i int) []byte { return g.entries[i*g.entrySize : (i+1)*g.entrySize] }

func (g *GPT) count() int { return len(g.entries) / g.entrySize }

// used tells whether an entry describes a partition: a type GUID not all zeros.
func used(e []byte) bool { return !bytes.Equal(e[:entryTypeEnd], make([]byte, entryTypeEnd)) }

// Entries lists the partitions, in table order (Index is the entry's
// position from 1, as in /dev/sda1).
func (g *GPT) Entries() []GPTEntry {
	var out []GPTEntry
	for i := 0; i < g.count(); i++ {
		e := g.entry(i)
		if !used(e) {
			continue
		}
		start, end := le64(e, entryStartOff), le64(e, entryEndOff)
		size := int64(0)
		if end >= start {
			size = int64(end-start+1) * g.sector
		}
		out = append(out, GPTEntry{
			Partition: Partition{
				Index:  i + 1,
				Label:  entryName(e),
				GUID:   guidString(e[entryTypeEnd:entryGUIDEnd]),
				Offset: int64(start) * g.sector,
				Size:   size,
			},
			Type:       guidString(e[:entryTypeEnd]),
			Attributes: le64(e, entryAttrOff),
		})
	}
	return out
}

// Usable is the range of the disk partitions may take.
func (g *GPT) Usable() Extent {
	return Extent{Offset: int64(g.firstUsable) * g.sector, Size: int64(g.lastUsable-g.firstUsable+1) * g.sector}
}

// Free lists the ranges of the usable sectors no partition takes, in
// disk order, each rounded inwards to align (a multiple of the sector
// size; 1 MiB for stagehand's partitions); ranges that round to nothing
// are left out.
func (g *GPT) Free(align int64) []Extent {
	if align < g.sector {
		align = g.sector
	}
	type span struct{ s, e uint64 } // sectors, inclusive
	var taken []span
	for _, e := range g.Entries() {
		s := uint64(e.Offset / g.sector)
		taken = append(taken, span{s, s + uint64(e.Size/g.sector) - 1})
	}
	slices.SortFunc(taken, func(a, b span) int { return cmp.Compare(a.s, b.s) })
	var out []Extent
	add := func(s, e uint64) { // free sectors s..e inclusive
		from := (int64(s)*g.sector + align - 1) / align * align
		to := (int64(e+1) * g.sector) / align * align
		if to > from {
			out = append(out, Extent{Offset: from, Size: to - from})
		}
	}
	next := g.firstUsable
	for _, t := range taken {
		if t.s > next {
			add(next, t.s-1)
		}
		next = max(next, t.e+1)
	}
	if next <= g.lastUsable {
		add(next, g.lastUsable)
	}
	return out
}

// Add puts a new partition in the first unused entry: size bytes from byte
// offset off, both whole sectors, inside the usable range and apart from
// every partition, with type typ (a GUID), name name (at most 36 UTF-16
// code units) and a new random partition GUID. It returns the partition.
// Nothing is written until WriteGPT.
func (g *GPT) Add(name, typ string, off, size int64) (GPTEntry, error) {
	t, err := uuid.Parse(typ)
	if err != nil || t == (uuid.UUID{}) {
		return GPTEntry{}, fmt.Errorf("partition type %q is no GUID", typ)
	}
	if off%g.sector != 0 || size%g.sector != 0 || size <= 0 {
		return GPTEntry{}, fmt.Errorf("partition %s: %d bytes at byte %d are not whole %d-byte sectors", name, size, off, g.sector)
	}
	name16 := utf16.Encode([]rune(name))
	if len(name16) > entryNameUnits {
		return GPTEntry{}, fmt.Errorf("partition name %q is longer than %d UTF-16 code units", name, entryNameUnits)
	}
	start, end := uint64(off/g.sector), uint64((off+size)/g.sector)-1
	if start < g.firstUsable || end > g.lastUsable {
		return GPTEntry{}, fmt.Errorf("partition %s (sectors %d to %d) is outside the usable sectors %d to %d", name, start, end, g.firstUsable, g.lastUsable)
	}
	for _, e := range g.Entries() {
		s := uint64(e.Offset / g.sector)
		if start <= s+uint64(e.Size/g.sector)-1 && s <= end {
			return GPTEntry{}, fmt.Errorf("partition %s (sectors %d to %d) overlaps partition %d", name, start, end, e.Index)
		}
	}
	i := 0
	for i < g.count() && used(g.entry(i)) {
		i++
	}
	if i == g.count() {
		return GPTEntry{}, fmt.Errorf("the GPT's %d entries are all used: no entry for partition %s", g.count(), name)
	}
	e := g.entry(i)
	clear(e)
	copy(e[:entryTypeEnd], guidBytes(t))
	copy(e[entryTypeEnd:entryGUIDEnd], guidBytes(uuid.New()))
	binary.LittleEndian.PutUint64(e[entryStartOff:], start)
	binary.LittleEndian.PutUint64(e[entryEndOff:], end)
	putName(e, name16)
	for _, p := range g.Entries() {
		if p.Index == i+1 {
			return p, nil
		}
	}
	panic("unreachable")
}

// Rename gives partition index (from 1) the name name, at most 36 UTF-16
// code units; the rest of its entry is kept.
func (g *GPT) Rename(index int, name string) error {
	if index < 1 || index > g.count() || !used(g.entry(index-1)) {
		return fmt.Errorf("no partition %d to rename", index)
	}
	name16 := utf16.Encode([]rune(name))
	if len(name16) > entryNameUnits {
		return fmt.Errorf("partition name %q is longer than %d UTF-16 code units", name, entryNameUnits)
	}
	putName(g.entry(index-1), name16)
	return nil
}

func putName(e []byte, name16 []uint16) {
	n := e[entryNameOff : entryNameOff+2*entryNameUnits]
	clear(n)
	for j, u := range name16 {
		binary.LittleEndian.PutUint16(n[2*j:], u)
	}
}

// entryName decodes an entry's name: UTF-16LE up to the first NUL.
func entryName(e []byte) string {
	var u []uint16
	for j := 0; j < entryNameUnits; j++ {
		c := binary.LittleEndian.Uint16(e[entryNameOff+2*j:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// guidBytes is a GUID as GPT stores it: its first three fields
// little-endian, the rest as written.
func guidBytes(u uuid.UUID) []byte {
	b := u[:]
	return []byte{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6],
		b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]}
}

// guidString reads a GUID as GPT stores it, upper case.
func guidString(b []byte) string {
	var u uuid.UUID
	copy(u[:], []byte{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]})
	copy(u[8:], b[8:16])
	return strings.ToUpper(u.String())
}

// WriteGPT writes g to the disk: the backup entry array, then the backup
// header, then the primary entry array, then the primary header, each
// synced before the next (as go-diskfs's gpt.Table.Write orders them). A
// cut leaves the primary GPT whole, old until its header is written, or,
// while its entry array is written, invalid with the backup whole and new,
// from which firmware, kernel and ReadGPT's callers (through Open) read
// the new table. The headers are the ones read with the array CRC and
// their own CRC set again; the backup header is the primary's with its own
// and the alternate LBA swapped and its array's LBA. The MBR is not
// written. The disk's partition list is read again afterwards.
func (d *Disk) WriteGPT(g *GPT) error {
	if int64(d.sectorSize) != g.sector || uint64(d.size/g.sector)-1 != g.lastLBA {
		return fmt.Errorf("writing the GPT of %s: the table was read from another disk", d.path)
	}
	arrayCRC := crc32.ChecksumIEEE(g.entries)
	primary := bytes.Clone(g.header)
	binary.LittleEndian.PutUint32(primary[hdrArrayCRC:], arrayCRC)
	binary.LittleEndian.PutUint32(primary[hdrCRC:], headerCRC(primary[:g.hdrSize]))
	backup := bytes.Clone(g.header)
	binary.LittleEndian.PutUint64(backup[hdrMyLBA:], g.lastLBA)
	binary.LittleEndian.PutUint64(backup[hdrAlternateLBA:], 1)
	binary.LittleEndian.PutUint64(backup[hdrArrayLBA:], g.backupArrayLBA)
	binary.LittleEndian.PutUint32(backup[hdrArrayCRC:], arrayCRC)
	binary.LittleEndian.PutUint32(backup[hdrCRC:], headerCRC(backup[:g.hdrSize]))

	w := d.Whole()
	for _, s := range []struct {
		what string
		b    []byte
		lba  uint64
	}{
		{"backup entry array", g.entries, g.backupArrayLBA},
		{"backup header", backup, g.lastLBA},
		{"primary entry array", g.entries, g.arrayLBA},
		{"primary header", primary, 1},
	} {
		if _, err := w.WriteAt(s.b, int64(s.lba)*g.sector); err != nil {
			return fmt.Errorf("writing the GPT of %s: %s: %w", d.path, s.what, err)
		}
		if err := d.Sync(); err != nil {
			return fmt.Errorf("writing the GPT of %s: %s: %w", d.path, s.what, err)
		}
	}
	g.header = primary
	g.BackupDiffers, g.FromBackup = false, false
	if err := d.probe(); err != nil {
		return fmt.Errorf("reading back the GPT written to %s: %w", d.path, err)
	}
	return nil
}

// AddKernelPartitions tells the kernel of partitions of a block device
// (BLKPG_ADD_PARTITION, as partx and partprobe do), one by one: the way
// to make new partitions known while another partition of the disk is
// mounted, when RereadPartitions fails with EBUSY. A partition the kernel
// has already (same number) is left as it is. It does nothing for an
// image file.
func (d *Disk) AddKernelPartitions(ps []Partition) error {
	if !d.block {
		return nil
	}
	for _, p := range ps {
		bp := unix.BlkpgPartition{Start: p.Offset, Length: p.Size, Pno: int32(p.Index)}
		arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_ADD_PARTITION, Datalen: int32(unsafe.Sizeof(bp)), Data: (*byte)(unsafe.Pointer(&bp))}
		for {
			_, _, e := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg)))
			runtime.KeepAlive(&bp)
			if e == unix.EINTR {
				continue
			}
			if e != 0 && e != unix.EBUSY {
				return fmt.Errorf("%s: adding partition %d: %w", d.path, p.Index, os.NewSyscallError("ioctl(BLKPG)", e))
			}
			break
		}
	}
	return nil
}

// Region returns p, a partition of the disk, as a region, whether or not
// the GPT lists it yet: the way to write a new partition's contents in free
// space before WriteGPT adds it, so that a cut before the table is written
// leaves nothing but unused space changed.
func (d *Disk) Region(p Partition) (*Region, error) { return d.region(p) }
