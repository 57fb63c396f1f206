package delta

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The index format, version 2, all integers little-endian:
//
//	offset  size  field
//	0       4     magic "SHDI"
//	4       2     version, 2
//	6       2     flags, 0
//	8       4     MinSize   } the chunker's parameters the chunks were cut
//	12      4     AvgSize   } with; seeds must be cut with the same ones
//	16      4     MaxSize   }
//	20      8     blob size
//	28      32    blob SHA-256
//	60      4     chunk count N
//	64      40×N  chunks in blob order: length (4), CRC-32C (4), SHA-256 (32)
//
// The CRC-32C (Castagnoli) lets a machine find the chunks it holds at the
// cost of cutting its seeds (hardware CRC, several GB/s) rather than of
// hashing them with SHA-256 as well; the SHA-256 then checks each chunk
// as it is copied or fetched (see Reader). Version 1, without the CRC,
// is refused: the image is then staged whole.
//
// The chunks tile the blob: their lengths sum to its size, each is at most
// MaxSize and all but the last at least MinSize. Nothing follows the last
// chunk. The index travels in the image, named by the manifest's digest,
// so it is as trusted as the manifest; its checks here keep a malformed one
// from costing memory or time.
const (
	magic      = "SHDI"
	version    = 2
	headerSize = 64
	entrySize  = 40
)

// Limits on an index's parameters: they bound the memory a Reader uses
// (three buffers of 1 MiB or of the largest chunk) and the work a hostile
// index can ask for.
const (
	MinChunkLimit = 64
	MaxChunkLimit = 4 << 20
	MaxChunks     = 1 << 24
)

// Params are the chunker's sizes, in bytes.
type Params struct {
	Min, Avg, Max uint32
}

// DefaultParams are what Build uses: 8, 32 and 128 KiB. See
// docs/delta.md for the measurements behind them.
var DefaultParams = Params{Min: 8 << 10, Avg: 32 << 10, Max: 128 << 10}

func (p Params) check() error {
	// min < max: FastCDC refuses min = max.
	if p.Min < MinChunkLimit || p.Max > MaxChunkLimit || !(p.Min <= p.Avg && p.Avg <= p.Max && p.Min < p.Max) {
		return fmt.Errorf("chunk sizes min %d, average %d, max %d: want %d ≤ min ≤ average ≤ max ≤ %d, min < max", p.Min, p.Avg, p.Max, MinChunkLimit, MaxChunkLimit)
	}
	return nil
}

// Chunk is one chunk of a blob.
type Chunk struct {
	Off    int64
	Len    uint32
	CRC    uint32 // CRC-32C (Castagnoli)
	SHA256 [32]byte
}

// Index describes a blob as its chunks.
type Index struct {
	Params Params
	Size   int64    // the blob's size
	SHA256 [32]byte // the blob's digest
	Chunks []Chunk
}

// Digest is the blob's digest as OCI writes it: "sha256:" and hex.
func (x *Index) Digest() string { return "sha256:" + hex.EncodeToString(x.SHA256[:]) }

// ErrInvalid marks bytes that are not an index.
var ErrInvalid = errors.New("invalid delta index")

// MarshalBinary encodes the index.
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.check(); err != nil {
		return nil, err
	}
	b := make([]byte, headerSize, headerSize+entrySize*len(x.Chunks))
	copy(b, magic)
	binary.LittleEndian.PutUint16(b[4:], version)
	binary.LittleEndian.PutUint32(b[8:], x.Params.Min)
	binary.LittleEndian.PutUint32(b[12:], x.Params.Avg)
	binary.LittleEndian.PutUint32(b[16:], x.Params.Max)
	binary.LittleEndian.PutUint64(b[20:], uint64(x.Size))
	copy(b[28:60], x.SHA256[:])
	binary.LittleEndian.PutUint32(b[60:], uint32(len(x.Chunks)))
	for _, c := range x.Chunks {
		b = binary.LittleEndian.AppendUint32(b, c.Len)
		b = binary.LittleEndian.AppendUint32(b, c.CRC)
		b = append(b, c.SHA256[:]...)
	}
	return b, nil
}

// Parse decodes an index, refusing anything MarshalBinary would not write.
func Parse(b []byte) (*Index, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if len(b) < headerSize {
		return nil, bad("%d bytes, shorter than the %d-byte header", len(b), headerSize)
	}
	if string(b[:4]) != magic {
		return nil, bad("no %q magic", magic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != version {
		return nil, bad("version %d, this stager reads %d", v, version)
	}
	if f := binary.LittleEndian.Uint16(b[6:]); f != 0 {
		return nil, bad("unknown flags %#x", f)
	}
	x := &Index{Params: Params{
		Min: binary.LittleEndian.Uint32(b[8:]),
		Avg: binary.LittleEndian.Uint32(b[12:]),
		Max: binary.LittleEndian.Uint32(b[16:]),
	}}
	size := binary.LittleEndian.Uint64(b[20:])
	if size > 1<<62 {
		return nil, bad("blob size %d", size)
	}
	x.Size = int64(size)
	copy(x.SHA256[:], b[28:60])
	n := binary.LittleEndian.Uint32(b[60:])
	if n > MaxChunks {
		return nil, bad("%d chunks, more than %d", n, MaxChunks)
	}
	if want := headerSize + entrySize*int64(n); int64(len(b)) != want {
		return nil, bad("%d bytes for %d chunks, want %d", len(b), n, want)
	}
	x.Chunks = make([]Chunk, n)
	off := int64(0)
	for i := range x.Chunks {
		e := b[headerSize+entrySize*i:]
		c := &x.Chunks[i]
		c.Off, c.Len, c.CRC = off, binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
		copy(c.SHA256[:], e[8:40])
		off += int64(c.Len)
	}
	if err := x.check(); err != nil {
		return nil, err
	}
	return x, nil
}

// check says whether the index is one MarshalBinary writes.
func (x *Index) check() error {
	if err := x.Params.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(x.Chunks) > MaxChunks {
		return fmt.Errorf("%w: %d chunks, more than %d", ErrInvalid, len(x.Chunks), MaxChunks)
	}
	if x.Size < 0 || x.Size > 1<<62 {
		return fmt.Errorf("%w: blob size %d", ErrInvalid, x.Size)
	}
	off := int64(0)
	for i, c := range x.Chunks {
		last := i == len(x.Chunks)-1
		if c.Off != off {
			return fmt.Errorf("%w: chunk %d at offset %d, want %d", ErrInvalid, i, c.Off, off)
		}
		if c.Len == 0 || c.Len > x.Params.Max || (!last && c.Len < x.Params.Min) {
			return fmt.Errorf("%w: chunk %d is %d bytes, outside [%d, %d]", ErrInvalid, i, c.Len, x.Params.Min, x.Params.Max)
		}
		off += int64(c.Len)
	}
	if off != x.Size {
		return fmt.Errorf("%w: chunks hold %d bytes, the blob %d", ErrInvalid, off, x.Size)
	}
	return nil
}

// Build chunks r with p and returns its index.
func Build(r io.Reader, p Params) (*Index, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	x := &Index{Params: p}
	blob := sha256.New()
	err := Cut(io.TeeReader(r, blob), p, func(off int64, data []byte) error {
		if len(x.Chunks) == MaxChunks {
			return fmt.Errorf("more than %d chunks", MaxChunks)
		}
		x.Chunks = append(x.Chunks, Chunk{Off: off, Len: uint32(len(data)), CRC: crc32.Checksum(data, castagnoli), SHA256: sha256.Sum256(data)})
		x.Size = off + int64(len(data))
		return nil
	})
	if err != nil {
		return nil, err
	}
	copy(x.SHA256[:], blob.Sum(nil))
	return x, nil
}
