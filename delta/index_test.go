package delta

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// randBytes returns n deterministic pseudo-random bytes: the same seed
// gives the same bytes on every run.
func randBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// smallParams cut small inputs into many chunks, so that tests stay fast.
var smallParams = Params{Min: 64, Avg: 256, Max: 1024}

// checkIndex checks that x describes data: chunks in Params, tiling the
// blob, with the right hashes.
func checkIndex(t *testing.T, x *Index, data []byte) {
	t.Helper()
	if x.Size != int64(len(data)) {
		t.Errorf("Size = %d, want %d", x.Size, len(data))
	}
	if x.SHA256 != sha256.Sum256(data) {
		t.Errorf("SHA256 = %x, want the data's %x", x.SHA256, sha256.Sum256(data))
	}
	off := int64(0)
	for i, c := range x.Chunks {
		if c.Off != off {
			t.Fatalf("chunk %d at %d, want %d (the chunks must tile the blob)", i, c.Off, off)
		}
		if c.Len == 0 || c.Len > x.Params.Max || (i < len(x.Chunks)-1 && c.Len < x.Params.Min) {
			t.Errorf("chunk %d of %d is %d bytes, outside %+v", i, len(x.Chunks), c.Len, x.Params)
		}
		if off+int64(c.Len) > int64(len(data)) {
			t.Fatalf("chunk %d [%d, %d) goes past the %d-byte blob", i, off, off+int64(c.Len), len(data))
		}
		if got := sha256.Sum256(data[off : off+int64(c.Len)]); got != c.SHA256 {
			t.Errorf("chunk %d: SHA256 %x, want %x", i, c.SHA256, got)
		}
		if got := crc32.Checksum(data[off:off+int64(c.Len)], crc32.MakeTable(crc32.Castagnoli)); got != c.CRC {
			t.Errorf("chunk %d: CRC %#x, want the CRC-32C %#x", i, c.CRC, got)
		}
		off += int64(c.Len)
	}
	if off != int64(len(data)) {
		t.Errorf("chunks hold %d bytes, the blob %d", off, len(data))
	}
}

// sameIndex says whether a and b are equal, a nil and an empty chunk list
// being the same.
func sameIndex(a, b *Index) bool {
	return a.Params == b.Params && a.Size == b.Size && a.SHA256 == b.SHA256 && slices.Equal(a.Chunks, b.Chunks)
}

func TestBuildRoundTrip(t *testing.T) {
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 8000)
	for _, tt := range []struct {
		name       string
		data       []byte
		p          Params
		wantChunks int // -1: any number, but more than one
	}{
		{"empty", nil, DefaultParams, 0},
		{"one byte", []byte{7}, DefaultParams, 1},
		{"shorter than Min", randBytes(1, 1000), DefaultParams, 1},
		{"random 3 MiB", randBytes(2, 3<<20), DefaultParams, -1},
		{"random, small params", randBytes(3, 64<<10), smallParams, -1},
		{"zeros", make([]byte, 1<<20), DefaultParams, -1},
		{"text", text, DefaultParams, -1},
		{"text, small params", text[:50<<10], smallParams, -1},
		{"Min = Avg", randBytes(4, 10<<10), Params{64, 64, 128}, -1},
		{"Avg = Max", randBytes(5, 10<<10), Params{64, 128, 128}, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x, err := Build(bytes.NewReader(tt.data), tt.p)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if x.Params != tt.p {
				t.Errorf("Params = %+v, want %+v", x.Params, tt.p)
			}
			checkIndex(t, x, tt.data)
			if tt.wantChunks >= 0 && len(x.Chunks) != tt.wantChunks {
				t.Errorf("%d chunks, want %d", len(x.Chunks), tt.wantChunks)
			}
			if tt.wantChunks < 0 && len(x.Chunks) < 2 {
				t.Errorf("%d chunks for %d bytes, want several", len(x.Chunks), len(tt.data))
			}

			b, err := x.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary: %v", err)
			}
			if want := headerSize + entrySize*len(x.Chunks); len(b) != want {
				t.Errorf("MarshalBinary: %d bytes, want %d", len(b), want)
			}
			y, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(MarshalBinary()): %v", err)
			}
			if !sameIndex(x, y) {
				t.Errorf("Parse(MarshalBinary(x)) = %+v, want x = %+v", y, x)
			}
			b2, err := y.MarshalBinary()
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("MarshalBinary(Parse(b)) = %d bytes, %v; want b", len(b2), err)
			}
		})
	}
}

func TestBuildDeterministic(t *testing.T) {
	data := randBytes(6, 256<<10)
	a, err := Build(bytes.NewReader(data), DefaultParams)
	if err != nil {
		t.Fatal(err)
	}
	// The same bytes, arriving one at a time, cut the same way.
	b, err := Build(&oneByteReader{data}, DefaultParams)
	if err != nil {
		t.Fatal(err)
	}
	if !sameIndex(a, b) {
		t.Errorf("two Builds of the same bytes differ: %d and %d chunks", len(a.Chunks), len(b.Chunks))
	}
}

type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0], r.b = r.b[0], r.b[1:]
	return 1, nil
}

func TestBuildRefusesParams(t *testing.T) {
	for _, p := range []Params{
		{},
		{Min: 63, Avg: 128, Max: 256},
		{Min: 128, Avg: 100, Max: 256},
		{Min: 64, Avg: 512, Max: 256},
		{Min: 64, Avg: 128, Max: MaxChunkLimit + 1},
		{Min: 64, Avg: 64, Max: 64}, // FastCDC wants Min < Max
	} {
		if x, err := Build(bytes.NewReader(randBytes(7, 4096)), p); err == nil {
			t.Errorf("Build with %+v = %d chunks, want an error", p, len(x.Chunks))
		}
	}
}

// Every chunk size the format allows can be cut: an index Parse accepts
// never has parameters the chunker refuses, so seeds can always be cut
// with them.
func TestParamsCuttable(t *testing.T) {
	for _, p := range []Params{
		{MinChunkLimit, MinChunkLimit, MinChunkLimit + 1},
		{MinChunkLimit, MinChunkLimit + 1, MinChunkLimit + 1},
		{MaxChunkLimit - 1, MaxChunkLimit, MaxChunkLimit},
		{MinChunkLimit, MinChunkLimit, MinChunkLimit},
		{MaxChunkLimit, MaxChunkLimit, MaxChunkLimit},
		{1000, 1000, 1000},
	} {
		checkErr := p.check()
		cutErr := Cut(bytes.NewReader([]byte("x")), p, func(int64, []byte) error { return nil })
		if (checkErr == nil) != (cutErr == nil) {
			t.Errorf("%+v: the format says %v, the chunker %v", p, checkErr, cutErr)
		}
	}
}

// rawIndex encodes an index as the format in index.go says, independently
// of MarshalBinary.
func rawIndex(p Params, size uint64, lens ...uint32) []byte {
	var b []byte
	b = append(b, "SHDI"...)
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, p.Min)
	b = binary.LittleEndian.AppendUint32(b, p.Avg)
	b = binary.LittleEndian.AppendUint32(b, p.Max)
	b = binary.LittleEndian.AppendUint64(b, size)
	b = append(b, bytes.Repeat([]byte{0xbb}, 32)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(lens)))
	for i, l := range lens {
		b = binary.LittleEndian.AppendUint32(b, l)
		b = binary.LittleEndian.AppendUint32(b, 0xc0c0c000+uint32(i))
		b = append(b, bytes.Repeat([]byte{byte(i)}, 32)...)
	}
	return b
}

var rawParams = Params{Min: 64, Avg: 128, Max: 256}

func TestParseLayout(t *testing.T) {
	b := rawIndex(rawParams, 350, 100, 200, 50)
	x, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Index{Params: rawParams, Size: 350, Chunks: []Chunk{
		{Off: 0, Len: 100, CRC: 0xc0c0c000},
		{Off: 100, Len: 200, CRC: 0xc0c0c001},
		{Off: 300, Len: 50, CRC: 0xc0c0c002},
	}}
	copy(want.SHA256[:], bytes.Repeat([]byte{0xbb}, 32))
	for i := range want.Chunks {
		copy(want.Chunks[i].SHA256[:], bytes.Repeat([]byte{byte(i)}, 32))
	}
	if !sameIndex(x, want) {
		t.Errorf("Parse = %+v, want %+v", x, want)
	}
	if m, err := want.MarshalBinary(); err != nil || !bytes.Equal(m, b) {
		t.Errorf("MarshalBinary = %x, %v; want %x", m, err, b)
	}
}

func TestParseRefuses(t *testing.T) {
	valid := rawIndex(rawParams, 350, 100, 200, 50)
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	for _, tt := range []struct {
		name string
		b    []byte
		want string // in the error
	}{
		{"nothing", nil, "header"},
		{"short header", valid[:headerSize-1], "header"},
		{"bad magic", edit(func(b []byte) []byte { b[0] = 's'; return b }), "magic"},
		{"version 0", edit(func(b []byte) []byte { b[4] = 0; return b }), "version"},
		{"version 1 (no CRC-32C)", edit(func(b []byte) []byte { b[4] = 1; return b }), "version 1"},
		{"version 3", edit(func(b []byte) []byte { b[4] = 3; return b }), "version"},
		{"flags", edit(func(b []byte) []byte { b[6] = 1; return b }), "flags"},
		{"high flags", edit(func(b []byte) []byte { b[7] = 0x80; return b }), "flags"},
		{"count above MaxChunks", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[60:], MaxChunks+1)
			return b
		}), "more than"},
		{"count 2^32-1", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[60:], 1<<32-1)
			return b
		}), "more than"},
		{"one byte extra", append(bytes.Clone(valid), 0), "bytes for 3 chunks"},
		{"one byte missing", valid[:len(valid)-1], "bytes for 3 chunks"},
		{"one chunk missing", valid[:len(valid)-entrySize], "bytes for 3 chunks"},
		{"count one less", edit(func(b []byte) []byte { b[60] = 2; return b }), "bytes for 2 chunks"},
		{"blob size above 2^62", rawIndex(rawParams, 1<<62+1), "size"},
		{"blob size 2^64-1", rawIndex(rawParams, 1<<64-1, 100), "size"},
		{"last chunk of 0 bytes", rawIndex(rawParams, 300, 100, 200, 0), "chunk 2 is 0 bytes"},
		{"only chunk of 0 bytes", rawIndex(rawParams, 0, 0), "chunk 0 is 0 bytes"},
		{"chunk shorter than Min", rawIndex(rawParams, 213, 100, 63, 50), "chunk 1 is 63 bytes"},
		{"first chunk shorter than Min", rawIndex(rawParams, 50+100, 50, 100), "chunk 0 is 50 bytes"},
		{"chunk longer than Max", rawIndex(rawParams, 357, 100, 257), "chunk 1 is 257 bytes"},
		{"last chunk longer than Max", rawIndex(rawParams, 257, 257), "chunk 0 is 257 bytes"},
		{"chunk of 2^32-1 bytes", rawIndex(rawParams, 1<<32-1, 1<<32-1), "chunk 0"},
		{"size above the chunks", rawIndex(rawParams, 351, 100, 200, 50), "chunks hold 350 bytes"},
		{"size below the chunks", rawIndex(rawParams, 349, 100, 200, 50), "chunks hold 350 bytes"},
		{"no chunks, size 1", rawIndex(rawParams, 1), "chunks hold 0 bytes"},
		{"Min below 64", rawIndex(Params{63, 128, 256}, 100, 100), "chunk sizes"},
		{"Min 0", rawIndex(Params{0, 128, 256}, 100, 100), "chunk sizes"},
		{"Avg below Min", rawIndex(Params{128, 100, 256}, 150, 150), "chunk sizes"},
		{"Avg above Max", rawIndex(Params{64, 512, 256}, 100, 100), "chunk sizes"},
		{"Max above 4 MiB", rawIndex(Params{64, 128, 4<<20 + 1}, 100, 100), "chunk sizes"},
		{"Min = Max", rawIndex(Params{256, 256, 256}, 256, 256), "chunk sizes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x, err := Parse(tt.b)
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", x)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse: %v, want an error wrapping ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse: %q, want it to say %q", err, tt.want)
			}
			if x != nil {
				t.Errorf("Parse returned an index with its error")
			}
		})
	}
}

func TestMarshalRefuses(t *testing.T) {
	good := func() *Index {
		return &Index{Params: rawParams, Size: 300, Chunks: []Chunk{{Off: 0, Len: 100}, {Off: 100, Len: 200}}}
	}
	if _, err := good().MarshalBinary(); err != nil {
		t.Fatalf("MarshalBinary of a valid index: %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(x *Index)
	}{
		{"offset wrong", func(x *Index) { x.Chunks[1].Off = 101 }},
		{"first offset not 0", func(x *Index) { x.Chunks[0].Off = 1; x.Chunks[1].Off = 101; x.Size = 301 }},
		{"size wrong", func(x *Index) { x.Size = 299 }},
		{"negative size", func(x *Index) { x.Chunks = nil; x.Size = -1 }},
		{"chunk of 0 bytes", func(x *Index) { x.Chunks = append(x.Chunks, Chunk{Off: 300}) }},
		{"chunk above Max", func(x *Index) { x.Chunks[1].Len = 257; x.Size = 357 }},
		{"bad params", func(x *Index) { x.Params.Min = 1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := good()
			tt.edit(x)
			if b, err := x.MarshalBinary(); !errors.Is(err, ErrInvalid) {
				t.Errorf("MarshalBinary = %d bytes, %v; want an error wrapping ErrInvalid", len(b), err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	x, err := Build(bytes.NewReader(randBytes(8, 4<<10)), smallParams)
	if err != nil {
		f.Fatal(err)
	}
	valid, err := x.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	empty, err := (&Index{Params: DefaultParams}).MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(empty)
	f.Add(rawIndex(rawParams, 350, 100, 200, 50))
	f.Add(valid[:headerSize])
	f.Add(valid[:len(valid)-1])
	f.Add(append(bytes.Clone(valid), 0))
	for _, at := range []int{5, 8, 20, 60, headerSize, headerSize + 1} {
		b := bytes.Clone(valid)
		b[at] ^= 0xff
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse: %v, not wrapping ErrInvalid", err)
			}
			return
		}
		m, err := x.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of what Parse accepted: %v", err)
		}
		if !bytes.Equal(m, b) {
			t.Errorf("MarshalBinary(Parse(b)) = %x, want b = %x", m, b)
		}
	})
}

// The same bytes cut the same way whatever precedes them: that is what
// lets a seed give chunks of a blob that holds its bytes elsewhere.
func TestContentDefined(t *testing.T) {
	d := randBytes(9, 4<<20)
	x := randBytes(10, 10<<10)
	for _, tt := range []struct {
		name  string
		other []byte // holds d somewhere
	}{
		{"prefix", append(bytes.Clone(x), d...)},
		{"suffix", append(bytes.Clone(d), x...)},
		{"inserted in the middle", slices.Concat(d[:2<<20], x, d[2<<20:])},
		{"one byte prefix", append([]byte{0}, d...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			xd, err := Build(bytes.NewReader(d), DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			xo, err := Build(bytes.NewReader(tt.other), DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			have := map[[32]byte]bool{}
			for _, c := range xo.Chunks {
				have[c.SHA256] = true
			}
			shared := int64(0)
			for _, c := range xd.Chunks {
				if have[c.SHA256] {
					shared += int64(c.Len)
				}
			}
			t.Logf("%d of %d bytes (%d chunks) shared", shared, xd.Size, len(xd.Chunks))
			if shared*10 < xd.Size*9 {
				t.Errorf("%d of %d bytes of d in chunks shared with %s, want at least 90%%", shared, xd.Size, tt.name)
			}
		})
	}
}

func TestCut(t *testing.T) {
	data := randBytes(11, 100<<10)
	var got []byte
	var offs []int64
	err := Cut(bytes.NewReader(data), smallParams, func(off int64, b []byte) error {
		if off != int64(len(got)) {
			t.Errorf("chunk at %d, want %d", off, len(got))
		}
		offs = append(offs, off)
		got = append(got, b...)
		return nil
	})
	if err != nil {
		t.Fatalf("Cut: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("the chunks do not make up the input")
	}
	if len(offs) < 50 {
		t.Errorf("%d chunks of 100 KiB with %+v, want many", len(offs), smallParams)
	}

	// fn's error stops the cut and is returned.
	stop := errors.New("stop")
	n := 0
	err = Cut(bytes.NewReader(data), smallParams, func(int64, []byte) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Errorf("Cut with fn failing at the 3rd chunk: %v after %d chunks, want %v after 3", err, n, stop)
	}

	// A read error is returned.
	broken := errors.New("broken disk")
	err = Cut(&failingReader{data: data, at: 50 << 10, err: broken}, smallParams, func(int64, []byte) error { return nil })
	if !errors.Is(err, broken) {
		t.Errorf("Cut of a failing reader: %v, want %v", err, broken)
	}
}

// refCut is FastCDC as Cut's comment states it, one byte at a time over
// the whole input: the chunks Cut must give, however its input arrives.
func refCut(data []byte, p Params) []int {
	bits := int(math.Round(math.Log2(float64(p.Avg))))
	maskS, maskL := uint64(1)<<(bits+2)-1, uint64(1)<<(bits-2)-1
	var lens []int
	for len(data) > 0 {
		n := len(data)
		if n > int(p.Min) {
			n = min(n, int(p.Max))
			fp := uint64(0)
			for i := int(p.Min); i < n; i++ {
				fp = fp<<1 + gear[data[i]]
				mask := maskL
				if i < int(p.Avg) {
					mask = maskS
				}
				if fp&mask == 0 {
					n = i + 1
					break
				}
			}
		}
		lens, data = append(lens, n), data[n:]
	}
	return lens
}

func TestCutReference(t *testing.T) {
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 20000)
	for _, tt := range []struct {
		name string
		data []byte
		p    Params
	}{
		{"random, default sizes", randBytes(21, 3<<20), DefaultParams},
		{"random, small sizes", randBytes(22, 200<<10), smallParams},
		{"random, Avg not a power of two", randBytes(23, 2<<20), Params{Min: 6000, Avg: 24000, Max: 100000}},
		{"random, Avg just above 2^(b+1/2)", randBytes(24, 1<<20), Params{Min: 1000, Avg: 2897, Max: 12000}},
		{"random, Avg just below 2^(b+1/2)", randBytes(25, 1<<20), Params{Min: 1000, Avg: 2896, Max: 12000}},
		{"text", text, DefaultParams},
		{"zeros: Max each", make([]byte, 1<<20), DefaultParams},
		{"shorter than Min", randBytes(26, 5000), DefaultParams},
		{"empty", nil, DefaultParams},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := refCut(tt.data, tt.p)
			for _, in := range []struct {
				name string
				r    io.Reader
			}{{"whole", bytes.NewReader(tt.data)}, {"a byte at a time", &oneByteReader{tt.data}}} {
				var got []int
				if err := Cut(in.r, tt.p, func(off int64, b []byte) error { got = append(got, len(b)); return nil }); err != nil {
					t.Fatalf("%s: Cut: %v", in.name, err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: %d chunks %v…, the reference %d %v…", in.name, len(got), got[:min(5, len(got))], len(want), want[:min(5, len(want))])
				}
			}
		})
	}
}

type failingReader struct {
	data []byte
	at   int
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.at == 0 {
		return 0, r.err
	}
	n := copy(p[:min(len(p), r.at)], r.data)
	r.data, r.at = r.data[n:], r.at-n
	return n, nil
}

// Chunkers run at once (seeds cut while an index is built) cut as one
// alone does; run with -race, this also checks they share nothing.
func TestCutConcurrent(t *testing.T) {
	data := randBytes(12, 256<<10)
	want, err := Build(bytes.NewReader(data), smallParams)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 3 {
				x, err := Build(bytes.NewReader(data), smallParams)
				if err != nil {
					t.Error(err)
					return
				}
				if !sameIndex(x, want) {
					t.Errorf("a Build run alongside others cut differently")
				}
			}
		})
	}
	wg.Wait()
}
