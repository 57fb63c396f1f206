package meta

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the format.
const (
	BlockSize     = 256 * 1024     // one copy
	PartitionSize = 1024 * 1024    // the META partition, exactly
	Capacity      = BlockSize - 40 // entries area: Σ(len+8) ≤ Capacity
	sumOffset     = BlockSize - 36 // SHA-256 field
	magic2Offset  = BlockSize - 4  // magic2 field
	magic1        = uint32(0x5a4b3c2d)
	magic2        = uint32(0xa5b4c3d2)
	entryHeader   = 8
)

// Errors a copy can fail with; Unmarshal wraps them with detail.
var (
	ErrBadMagic  = errors.New("bad magic")
	ErrChecksum  = errors.New("checksum mismatch")
	ErrMalformed = errors.New("malformed entries")
	ErrFull      = errors.New("META full")
)

// Tag identifies an entry. Talos keeps tags as one byte, so they stop at 0xff.
type Tag uint8

// Entry is one tag and its value.
type Entry struct {
	Tag   Tag
	Value []byte
}

// Block is the decoded contents of one copy: entries in on-disk order, so
// that a block read from disk encodes back to the same bytes. The zero value
// is an empty block.
type Block struct {
	entries []Entry
}

// Get returns a copy of tag's value.
func (b *Block) Get(t Tag) ([]byte, bool) {
	if i := b.index(t); i >= 0 {
		return bytes.Clone(b.entries[i].Value), true
	}
	return nil, false
}

// Set stores a copy of v under t, in place if t exists, else at the end. It
// fails with ErrFull when the entries would not fit, leaving b unchanged.
func (b *Block) Set(t Tag, v []byte) error {
	if t == 0 {
		return fmt.Errorf("tag 0x00 is the end marker and cannot hold a value")
	}
	i := b.index(t)
	used := b.Used()
	if i >= 0 {
		used -= len(b.entries[i].Value) + entryHeader
	}
	if used+len(v)+entryHeader > Capacity {
		return fmt.Errorf("%w: tag 0x%02x needs %d bytes, %d of %d free", ErrFull, t, len(v)+entryHeader, Capacity-used, Capacity)
	}
	if i >= 0 {
		b.entries[i].Value = bytes.Clone(v)
	} else {
		b.entries = append(b.entries, Entry{Tag: t, Value: bytes.Clone(v)})
	}
	return nil
}

func (b *Block) index(t Tag) int {
	for i, e := range b.entries {
		if e.Tag == t {
			return i
		}
	}
	return -1
}

// Delete removes t and reports whether it was there.
func (b *Block) Delete(t Tag) bool {
	i := b.index(t)
	if i < 0 {
		return false
	}
	b.entries = append(b.entries[:i:i], b.entries[i+1:]...)
	return true
}

// Entries returns copies of the entries in on-disk order.
func (b *Block) Entries() []Entry {
	out := make([]Entry, len(b.entries))
	for i, e := range b.entries {
		out[i] = Entry{Tag: e.Tag, Value: bytes.Clone(e.Value)}
	}
	return out
}

// Used is the number of bytes of the entries area in use.
func (b *Block) Used() int {
	n := 0
	for _, e := range b.entries {
		n += len(e.Value) + entryHeader
	}
	return n
}

// Clone returns a deep copy of b.
func (b *Block) Clone() *Block {
	return &Block{entries: b.Entries()}
}

// Marshal encodes b as one BlockSize copy.
func (b *Block) Marshal() ([]byte, error) {
	if b.Used() > Capacity {
		return nil, fmt.Errorf("%w: %d bytes of entries, capacity %d", ErrFull, b.Used(), Capacity)
	}
	buf := make([]byte, BlockSize)
	binary.BigEndian.PutUint32(buf[0:], magic1)
	off := 4
	for _, e := range b.entries {
		binary.BigEndian.PutUint32(buf[off:], uint32(e.Tag))
		binary.BigEndian.PutUint32(buf[off+4:], uint32(len(e.Value)))
		off += entryHeader + copy(buf[off+entryHeader:], e.Value)
	}
	binary.BigEndian.PutUint32(buf[magic2Offset:], magic2)
	sum := sha256.Sum256(buf)
	copy(buf[sumOffset:], sum[:])
	return buf, nil
}

// Unmarshal decodes one copy. It never modifies buf and the returned block
// does not alias it.
func Unmarshal(buf []byte) (*Block, error) {
	if len(buf) != BlockSize {
		return nil, fmt.Errorf("%w: copy is %d bytes, want %d", ErrMalformed, len(buf), BlockSize)
	}
	if m := binary.BigEndian.Uint32(buf); m != magic1 {
		return nil, fmt.Errorf("%w: magic1 is 0x%08x, want 0x%08x", ErrBadMagic, m, magic1)
	}
	if m := binary.BigEndian.Uint32(buf[magic2Offset:]); m != magic2 {
		return nil, fmt.Errorf("%w: magic2 is 0x%08x, want 0x%08x", ErrBadMagic, m, magic2)
	}
	if want, got := checksum(buf), buf[sumOffset:magic2Offset]; !bytes.Equal(want[:], got) {
		return nil, fmt.Errorf("%w: stored %x, computed %x", ErrChecksum, got[:8], want[:8])
	}
	b := &Block{}
	area := buf[4:sumOffset]
	seen := map[uint32]bool{}
	off := 0
	for off+entryHeader <= len(area) {
		tag := binary.BigEndian.Uint32(area[off:])
		if tag == 0 {
			break
		}
		size := binary.BigEndian.Uint32(area[off+4:])
		if uint64(size) > uint64(len(area)-off-entryHeader) {
			return nil, fmt.Errorf("%w: tag 0x%x at offset %d claims %d bytes, %d left", ErrMalformed, tag, off+4, size, len(area)-off-entryHeader)
		}
		if tag > 0xff {
			return nil, fmt.Errorf("%w: tag 0x%x at offset %d is above 0xff", ErrMalformed, tag, off+4)
		}
		if seen[tag] {
			return nil, fmt.Errorf("%w: tag 0x%02x repeats at offset %d", ErrMalformed, tag, off+4)
		}
		seen[tag] = true
		start := off + entryHeader
		b.entries = append(b.entries, Entry{Tag: Tag(tag), Value: bytes.Clone(area[start : start+int(size)])})
		off = start + int(size)
	}
	if off < len(area) && !allZero(area[off:]) {
		return nil, fmt.Errorf("%w: non-zero bytes after the end tag at offset %d", ErrMalformed, off+4)
	}
	return b, nil
}

// checksum is the SHA-256 of buf with the checksum field taken as zeros,
// computed without touching buf.
func checksum(buf []byte) [32]byte {
	h := sha256.New()
	h.Write(buf[:sumOffset])
	h.Write(make([]byte, 32))
	h.Write(buf[magic2Offset:])
	var s [32]byte
	h.Sum(s[:0])
	return s
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
