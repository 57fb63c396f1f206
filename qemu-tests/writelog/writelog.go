package writelog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic and Version identify a dm-log-writes v1 superblock.
const (
	Magic   = 0x6a736677736872
	Version = 1
)

// Entry flags, as dm-log-writes defines them.
const (
	Flush   = 1 << 0
	FUA     = 1 << 1
	Discard = 1 << 2
	Mark    = 1 << 3
	known   = Flush | FUA | Discard | Mark
)

// MaxSectorSize bounds the sector size a log may declare.
const MaxSectorSize = 64 << 10

// maxEntrySectors bounds one write (dm-log-writes splits larger bios).
const maxEntrySectors = 1 << 24

// ErrFormat marks a log whose superblock is not dm-log-writes v1.
var ErrFormat = errors.New("not a dm-log-writes v1 log")

// Entry is one logged request. The log layout, little-endian, one
// sector of SectorSize each:
//
//	superblock, sector 0: magic u64 | version u64 | nr_entries u64 | sectorsize u32
//	entry header:         sector u64 | nr_sectors u64 | flags u64 | data_len u64 | mark text (data_len bytes, MARK only)
//	entry data:           nr_sectors sectors (none for DISCARD, MARK and FLUSH)
type Entry struct {
	Sector    uint64 // first sector written, in SectorSize units
	NrSectors uint64 // sectors written or discarded
	Flags     uint64
	Data      []byte // NrSectors*SectorSize bytes for a write; nil otherwise
	Mark      string // for a MARK entry
}

// Log is a parsed write log.
type Log struct {
	SectorSize int
	// Declared is the superblock's entry count, which may lag behind the
	// entries actually logged.
	Declared uint64
	Entries  []Entry
}

// Read parses a log of size bytes from r. The superblock's count can lag (QEMU updates it
// only every log-super-update-interval entries, and a SIGKILL stops it),
// so entries are read until the first that is not a valid entry: a short
// or all-zero header, unknown flags, or data past the end of the log.
func Read(r io.ReaderAt, size int64) (*Log, error) {
	var sb [28]byte
	if _, err := r.ReadAt(sb[:], 0); err != nil {
		return nil, fmt.Errorf("reading the write log's superblock: %w", err)
	}
	if m := binary.LittleEndian.Uint64(sb[0:]); m != Magic {
		return nil, fmt.Errorf("%w: magic %#x, want %#x", ErrFormat, m, uint64(Magic))
	}
	if v := binary.LittleEndian.Uint64(sb[8:]); v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrFormat, v, Version)
	}
	ss := binary.LittleEndian.Uint32(sb[24:])
	if ss < 512 || ss > MaxSectorSize || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("%w: sector size %d, want a power of two from 512 to %d", ErrFormat, ss, MaxSectorSize)
	}
	l := &Log{SectorSize: int(ss), Declared: binary.LittleEndian.Uint64(sb[16:])}
	sector := int64(ss)
	hdr := make([]byte, ss)
	for off := sector; ; {
		if off+sector > size {
			return l, nil
		}
		if n, _ := r.ReadAt(hdr, off); n < len(hdr) {
			return l, nil
		}
		e := Entry{
			Sector:    binary.LittleEndian.Uint64(hdr[0:]),
			NrSectors: binary.LittleEndian.Uint64(hdr[8:]),
			Flags:     binary.LittleEndian.Uint64(hdr[16:]),
		}
		dataLen := binary.LittleEndian.Uint64(hdr[24:])
		if e.Flags&^known != 0 || (e.Flags == 0 && e.NrSectors == 0) || e.NrSectors > maxEntrySectors {
			return l, nil
		}
		off += sector
		switch {
		case e.Flags&Mark != 0:
			if dataLen > uint64(ss)-32 || e.NrSectors != 0 {
				return l, nil
			}
			e.Mark = string(hdr[32 : 32+dataLen])
		case dataLen != 0:
			return l, nil // QEMU and dm-log-writes log data_len 0 for writes
		case e.Flags&Discard != 0 || e.NrSectors == 0:
		default:
			if e.NrSectors > uint64(size-off)/uint64(ss) {
				return l, nil
			}
			e.Data = make([]byte, e.NrSectors*uint64(ss))
			if n, _ := r.ReadAt(e.Data, off); n < len(e.Data) {
				return l, nil
			}
			off += int64(len(e.Data))
		}
		l.Entries = append(l.Entries, e)
	}
}

// Writer appends entries to a log, as blklogwrites does; Close writes the
// final count into the superblock.
type Writer struct {
	w          io.WriterAt
	sectorSize int
	next       int64
	n          uint64
}

// NewWriter starts a log with the given sector size on w, from offset 0.
func NewWriter(w io.WriterAt, sectorSize int) (*Writer, error) {
	if sectorSize < 512 || sectorSize > MaxSectorSize || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("write log sector size %d: want a power of two from 512 to %d", sectorSize, MaxSectorSize)
	}
	lw := &Writer{w: w, sectorSize: sectorSize, next: int64(sectorSize)}
	return lw, lw.super()
}

func (lw *Writer) super() error {
	sb := make([]byte, lw.sectorSize)
	binary.LittleEndian.PutUint64(sb[0:], Magic)
	binary.LittleEndian.PutUint64(sb[8:], Version)
	binary.LittleEndian.PutUint64(sb[16:], lw.n)
	binary.LittleEndian.PutUint32(sb[24:], uint32(lw.sectorSize))
	if _, err := lw.w.WriteAt(sb, 0); err != nil {
		return fmt.Errorf("writing the write log's superblock: %w", err)
	}
	return nil
}

// Append logs e. A write's Data must be NrSectors whole sectors (NrSectors
// is taken from it when 0); a mark's text fits in its header sector.
func (lw *Writer) Append(e Entry) error {
	ss := uint64(lw.sectorSize)
	if e.Flags&^known != 0 {
		return fmt.Errorf("write log entry: unknown flags %#x", e.Flags)
	}
	isWrite := e.Flags&(Mark|Discard) == 0 && len(e.Data) > 0
	if isWrite {
		if uint64(len(e.Data))%ss != 0 {
			return fmt.Errorf("write log entry at sector %d: %d bytes of data, not whole %d-byte sectors", e.Sector, len(e.Data), ss)
		}
		e.NrSectors = uint64(len(e.Data)) / ss
	} else if len(e.Data) > 0 {
		return fmt.Errorf("write log entry at sector %d: data on a flush, discard or mark", e.Sector)
	}
	if e.Flags == 0 && e.NrSectors == 0 {
		return fmt.Errorf("write log entry at sector %d: empty", e.Sector)
	}
	hdr := make([]byte, ss)
	binary.LittleEndian.PutUint64(hdr[0:], e.Sector)
	binary.LittleEndian.PutUint64(hdr[8:], e.NrSectors)
	binary.LittleEndian.PutUint64(hdr[16:], e.Flags)
	if e.Flags&Mark != 0 {
		if e.NrSectors != 0 || uint64(len(e.Mark)) > ss-32 {
			return fmt.Errorf("write log mark %q: too long, or with sectors", e.Mark)
		}
		binary.LittleEndian.PutUint64(hdr[24:], uint64(len(e.Mark)))
		copy(hdr[32:], e.Mark)
	} else if e.Mark != "" {
		return fmt.Errorf("write log entry at sector %d: mark text without the MARK flag", e.Sector)
	}
	if _, err := lw.w.WriteAt(hdr, lw.next); err != nil {
		return fmt.Errorf("writing the write log: %w", err)
	}
	lw.next += int64(ss)
	if isWrite {
		if _, err := lw.w.WriteAt(e.Data, lw.next); err != nil {
			return fmt.Errorf("writing the write log: %w", err)
		}
		lw.next += int64(len(e.Data))
	}
	lw.n++
	return nil
}

// Close writes the entry count into the superblock.
func (lw *Writer) Close() error { return lw.super() }
