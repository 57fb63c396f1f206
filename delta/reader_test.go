package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stagehand-dev/stagehand/internal/crcforge"
)

// fixture is a blob v1 and the next one, v2: v1 with a region in the
// middle changed and bytes inserted further on; x is v2's index.
type fixture struct {
	v1, v2 []byte
	x      *Index
}

var getFixture = sync.OnceValue(func() fixture {
	const mib = 1 << 20
	v1 := randBytes(20, 4*mib)
	v2 := slices.Concat(
		v1[:mib],
		randBytes(21, 100<<10), // in place of v1's next 100 KiB
		v1[mib+100<<10:3*mib],
		randBytes(22, 30<<10), // inserted
		v1[3*mib:],
	)
	x, err := Build(bytes.NewReader(v2), DefaultParams)
	if err != nil {
		panic(err)
	}
	return fixture{v1, v2, x}
})

// source serves ranges of blob, recording each OpenRange.
type source struct {
	blob []byte
	// serve, if set, gives what range r returns in place of b, its bytes.
	serve func(r Range, b []byte) ([]byte, error)

	mu    sync.Mutex
	calls []Range
	open  int // bodies not closed
}

func (s *source) OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, Range{off, n})
	if off < 0 || n <= 0 || off+n > int64(len(s.blob)) {
		return nil, fmt.Errorf("test source: range [%d, %d) outside the %d-byte blob", off, off+n, len(s.blob))
	}
	b := bytes.Clone(s.blob[off : off+n])
	if s.serve != nil {
		var err error
		if b, err = s.serve(Range{off, n}, b); err != nil {
			return nil, err
		}
	}
	s.open++
	return &body{Reader: bytes.NewReader(b), s: s}, nil
}

type body struct {
	*bytes.Reader
	s      *source
	closed bool
}

func (b *body) Close() error {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.s.open--
	}
	return nil
}

// check checks that every range asked lies in the blob and that every
// body opened was closed.
func (s *source) check(t *testing.T) {
	t.Helper()
	for _, r := range s.calls {
		if r.Off < 0 || r.Len <= 0 || r.Off+r.Len > int64(len(s.blob)) {
			t.Errorf("OpenRange(%d, %d): outside the %d-byte blob", r.Off, r.Len, len(s.blob))
		}
	}
	if s.open != 0 {
		t.Errorf("%d bodies left open", s.open)
	}
}

// logger records what a Reader or IndexSeeds logs.
type logger struct {
	t     *testing.T
	lines []string
}

func (l *logger) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.t.Log("logf: " + line)
	l.lines = append(l.lines, line)
}

// plan indexes seeds for x and plans x from them.
func plan(t *testing.T, x *Index, seeds []Seed) (*Plan, *logger) {
	t.Helper()
	l := &logger{t: t}
	s, err := IndexSeeds(context.Background(), seeds, x.Params, x, l.logf)
	if err != nil {
		t.Fatalf("IndexSeeds: %v", err)
	}
	return NewPlan(x, s), l
}

func seedOf(name string, b []byte) Seed {
	return Seed{Name: name, R: bytes.NewReader(b), Size: int64(len(b))}
}

// checkPlan checks that p is consistent: each chunk from a seed is there,
// the rest are in the ranges to fetch, merged, and the counts add up.
func checkPlan(t *testing.T, p *Plan) {
	t.Helper()
	x := p.Index
	if len(p.From) != len(x.Chunks) {
		t.Fatalf("%d chunks planned, the index has %d", len(p.From), len(x.Chunks))
	}
	if len(p.Reused) != len(p.Seeds.list) {
		t.Errorf("Reused for %d seeds, there are %d", len(p.Reused), len(p.Seeds.list))
	}
	reused := make([]int64, len(p.Reused))
	fetched := int64(0)
	r := 0 // the range the next fetched chunk must be in
	for i, c := range x.Chunks {
		from := p.From[i]
		if from.Seed < 0 {
			fetched += int64(c.Len)
			for r < len(p.Fetch) && p.Fetch[r].Off+p.Fetch[r].Len <= c.Off {
				r++
			}
			if r == len(p.Fetch) || c.Off < p.Fetch[r].Off || c.Off+int64(c.Len) > p.Fetch[r].Off+p.Fetch[r].Len {
				t.Errorf("chunk %d [%d, %d) is fetched but in no range of %v", i, c.Off, c.Off+int64(c.Len), p.Fetch)
			}
			continue
		}
		if from.Seed >= len(p.Seeds.list) {
			t.Fatalf("chunk %d from seed %d of %d", i, from.Seed, len(p.Seeds.list))
		}
		reused[from.Seed] += int64(c.Len)
		sd := p.Seeds.list[from.Seed]
		b := make([]byte, c.Len)
		if _, err := sd.R.ReadAt(b, from.Off); err != nil || sha256.Sum256(b) != c.SHA256 {
			t.Errorf("chunk %d from seed %s at %d: not there (%v)", i, sd.Name, from.Off, err)
		}
	}
	if !slices.Equal(reused, p.Reused) {
		t.Errorf("Reused = %v, the chunks from each seed add up to %v", p.Reused, reused)
	}
	if fetched != p.Fetched {
		t.Errorf("Fetched = %d, the fetched chunks add up to %d", p.Fetched, fetched)
	}
	total := p.Fetched
	for _, n := range p.Reused {
		total += n
	}
	if total != x.Size {
		t.Errorf("Reused %v + Fetched %d = %d, want Size %d", p.Reused, p.Fetched, total, x.Size)
	}
	inRanges := int64(0)
	for i, rg := range p.Fetch {
		inRanges += rg.Len
		if rg.Len <= 0 || rg.Off < 0 || rg.Off+rg.Len > x.Size {
			t.Errorf("range %d %+v: empty or outside the blob", i, rg)
		}
		if i > 0 && p.Fetch[i-1].Off+p.Fetch[i-1].Len >= rg.Off {
			t.Errorf("ranges %d %+v and %d %+v overlap, touch or are out of order", i-1, p.Fetch[i-1], i, rg)
		}
	}
	// With each fetched chunk in a range and no overlaps, this says the
	// ranges hold only fetched chunks.
	if inRanges != p.Fetched {
		t.Errorf("the ranges hold %d bytes, the fetched chunks %d", inRanges, p.Fetched)
	}
}

func TestPlan(t *testing.T) {
	f := getFixture()
	const mib = 1 << 20
	empty, err := Build(bytes.NewReader(nil), DefaultParams)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		x     *Index
		seeds []Seed
		check func(t *testing.T, p *Plan)
	}{
		{"no seeds", f.x, nil, func(t *testing.T, p *Plan) {
			if want := []Range{{0, f.x.Size}}; !slices.Equal(p.Fetch, want) {
				t.Errorf("Fetch = %v, want %v", p.Fetch, want)
			}
		}},
		{"unrelated seed", f.x, []Seed{seedOf("noise", randBytes(30, mib))}, func(t *testing.T, p *Plan) {
			if want := []Range{{0, f.x.Size}}; !slices.Equal(p.Fetch, want) {
				t.Errorf("Fetch = %v, want %v", p.Fetch, want)
			}
		}},
		{"the blob itself", f.x, []Seed{seedOf("v2", f.v2)}, func(t *testing.T, p *Plan) {
			if len(p.Fetch) != 0 || p.Reused[0] != f.x.Size {
				t.Errorf("Fetch = %v, Reused = %v; want none, all from the seed", p.Fetch, p.Reused)
			}
		}},
		{"the blob twice", f.x, []Seed{seedOf("v2", f.v2), seedOf("v2 again", f.v2)}, func(t *testing.T, p *Plan) {
			if len(p.Fetch) != 0 || p.Reused[0] != f.x.Size || p.Reused[1] != 0 {
				t.Errorf("Fetch = %v, Reused = %v; want none, all from the first seed", p.Fetch, p.Reused)
			}
		}},
		{"the previous blob", f.x, []Seed{seedOf("v1", f.v1)}, func(t *testing.T, p *Plan) {
			if len(p.Fetch) < 2 || p.Fetched > f.x.Size/8 {
				t.Errorf("Fetch = %v (%d bytes of %d); want a range for each of the 2 changes, an eighth of the blob at most", p.Fetch, p.Fetched, f.x.Size)
			}
		}},
		{"the previous blob in two seeds", f.x, []Seed{seedOf("v1 head", f.v1[:2*mib]), seedOf("v1 tail", f.v1[2*mib:])}, func(t *testing.T, p *Plan) {
			if p.Reused[0] == 0 || p.Reused[1] == 0 || p.Fetched > f.x.Size/4 {
				t.Errorf("Reused = %v, Fetched = %d; want chunks from both seeds, little fetched", p.Reused, p.Fetched)
			}
		}},
		{"empty blob", empty, []Seed{seedOf("v1", f.v1)}, func(t *testing.T, p *Plan) {
			if len(p.Fetch) != 0 || len(p.From) != 0 || p.Reused[0] != 0 {
				t.Errorf("Fetch = %v, From = %v, Reused = %v; want nothing", p.Fetch, p.From, p.Reused)
			}
		}},
		{"empty blob, no seeds", empty, nil, func(t *testing.T, p *Plan) {
			if len(p.Fetch) != 0 || p.Fetched != 0 {
				t.Errorf("Fetch = %v, Fetched %d; want nothing", p.Fetch, p.Fetched)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, l := plan(t, tt.x, tt.seeds)
			checkPlan(t, p)
			tt.check(t, p)
			if len(l.lines) != 0 {
				t.Errorf("logged %q, want nothing", l.lines)
			}
		})
	}
}

// readAll reads r in reads of varying sizes, down to one byte.
func readAll(r io.Reader) ([]byte, error) {
	var out []byte
	sizes := []int{1, 1000, 70000, 3, 1 << 20}
	for i := 0; ; i++ {
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func TestReader(t *testing.T) {
	f := getFixture()
	empty, err := Build(bytes.NewReader(nil), DefaultParams)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		x          *Index
		blob       []byte
		seeds      []Seed
		maxFetched int64
	}{
		{"from the previous blob", f.x, f.v2, []Seed{seedOf("v1", bytes.Clone(f.v1))}, f.x.Size / 8},
		{"from two seeds", f.x, f.v2, []Seed{seedOf("v1 head", f.v1[:2<<20]), seedOf("v1 tail", f.v1[2<<20:])}, f.x.Size / 4},
		{"no seeds", f.x, f.v2, nil, f.x.Size},
		{"all in a seed", f.x, f.v2, []Seed{seedOf("v2", f.v2)}, 0},
		{"all in a seed saying EOF with its last bytes", f.x, f.v2, []Seed{{Name: "v2", R: eofAt{bytes.NewReader(f.v2)}, Size: int64(len(f.v2))}}, 0},
		{"empty blob", empty, nil, []Seed{seedOf("v1", f.v1)}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, l := plan(t, tt.x, tt.seeds)
			src := &source{blob: tt.blob}
			r := NewReader(context.Background(), p, src, l.logf)
			got, err := readAll(r)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !bytes.Equal(got, tt.blob) {
				t.Fatalf("read %d bytes, not the blob's %d", len(got), len(tt.blob))
			}
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("Read after the end = %d, %v; want 0, EOF", n, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			want := Stats{Reused: tt.x.Size - p.Fetched, Fetched: p.Fetched, Requests: len(p.Fetch)}
			if r.Stats() != want {
				t.Errorf("Stats = %+v, want %+v", r.Stats(), want)
			}
			if r.Stats().Fetched > tt.maxFetched {
				t.Errorf("fetched %d bytes of %d, want at most %d", r.Stats().Fetched, tt.x.Size, tt.maxFetched)
			}
			if !slices.Equal(src.calls, p.Fetch) {
				t.Errorf("ranges opened %v, want the plan's %v", src.calls, p.Fetch)
			}
			src.check(t)
			if len(l.lines) != 0 {
				t.Errorf("logged %q, want nothing", l.lines)
			}
		})
	}
}

// eofAt returns io.EOF with the bytes of a read that reaches its end, as
// io.ReaderAt allows.
type eofAt struct{ r *bytes.Reader }

func (e eofAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := e.r.ReadAt(p, off)
	if err == nil && off+int64(n) == e.r.Size() {
		err = io.EOF
	}
	return n, err
}

// seedAt is a seed's bytes whose reads can be made to fail.
type seedAt struct {
	b    []byte
	fail int64 // reads reaching this offset fail; -1: none
	err  error
}

func (s *seedAt) ReadAt(p []byte, off int64) (int, error) {
	if s.fail >= 0 && off <= s.fail && s.fail < off+int64(len(p)) {
		return copy(p, s.b[off:s.fail]), s.err
	}
	return bytes.NewReader(s.b).ReadAt(p, off)
}

// Chunks a seed should give but no longer holds are fetched alone, once
// each, with one line to logf for the seed.
func TestReaderLyingSeed(t *testing.T) {
	f := getFixture()
	// Chunks of the plan from v1, by where they are.
	first := func(p *Plan) []int { return []int{slices.IndexFunc(p.From, func(l Loc) bool { return l.Seed == 0 })} }
	last := func(p *Plan) []int {
		for i := len(p.From) - 1; ; i-- {
			if p.From[i].Seed == 0 {
				return []int{i}
			}
		}
	}
	beforeFetched := func(p *Plan) []int {
		for i := range p.From[1:] {
			if p.From[i].Seed == 0 && p.From[i+1].Seed < 0 {
				return []int{i}
			}
		}
		return nil
	}
	afterFetched := func(p *Plan) []int {
		for i := 1; i < len(p.From); i++ {
			if p.From[i].Seed == 0 && p.From[i-1].Seed < 0 {
				return []int{i}
			}
		}
		return nil
	}
	two := func(p *Plan) []int { return []int{first(p)[0], last(p)[0]} }
	run := func(p *Plan) []int {
		i := first(p)[0]
		return []int{i, i + 1, i + 2}
	}

	changeBytes := func(s *seedAt, c Chunk, l Loc) { s.b[l.Off+int64(c.Len)/2] ^= 1 }
	failRead := func(s *seedAt, c Chunk, l Loc) { s.fail, s.err = l.Off, errors.New("input/output error") }
	shrink := func(s *seedAt, c Chunk, l Loc) { s.fail, s.err = l.Off+int64(c.Len)-1, io.EOF }

	for _, tt := range []struct {
		name  string
		pick  func(p *Plan) []int // the chunks to break
		spoil func(s *seedAt, c Chunk, l Loc)
	}{
		{"bytes changed", first, changeBytes},
		{"bytes changed in the last chunk from the seed", last, changeBytes},
		{"bytes changed before a fetched range", beforeFetched, changeBytes},
		{"bytes changed after a fetched range", afterFetched, changeBytes},
		{"bytes changed in two chunks", two, changeBytes},
		{"bytes changed in three chunks in a row", run, changeBytes},
		{"read fails", first, failRead},
		{"read fails before a fetched range", beforeFetched, failRead},
		{"seed shorter", last, shrink},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sd := &seedAt{b: bytes.Clone(f.v1), fail: -1}
			p, l := plan(t, f.x, []Seed{{Name: "slot a initramfs", R: sd, Size: int64(len(sd.b))}})
			broken := tt.pick(p)
			if len(broken) == 0 || slices.Contains(broken, -1) {
				t.Fatalf("no chunk to break in %v", p.From)
			}
			var refetch []Range
			lost := int64(0)
			for _, i := range broken {
				c, from := f.x.Chunks[i], p.From[i]
				if from.Seed != 0 {
					t.Fatalf("chunk %d is not from the seed: %+v", i, from)
				}
				tt.spoil(sd, c, from)
				refetch = append(refetch, Range{c.Off, int64(c.Len)})
				lost += int64(c.Len)
			}

			src := &source{blob: f.v2}
			r := NewReader(context.Background(), p, src, l.logf)
			got, err := readAll(r)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !bytes.Equal(got, f.v2) {
				t.Fatalf("read %d bytes, not the blob's %d", len(got), len(f.v2))
			}
			want := Stats{
				Reused:    f.x.Size - p.Fetched - lost,
				Fetched:   p.Fetched + lost,
				Requests:  len(p.Fetch) + len(broken),
				Refetched: lost,
			}
			if r.Stats() != want {
				t.Errorf("Stats = %+v, want %+v", r.Stats(), want)
			}
			if len(l.lines) != 1 || !strings.Contains(l.lines[0], "slot a initramfs") {
				t.Errorf("logged %q, want one line naming the seed", l.lines)
			}
			// The plan's ranges, in order, and one for each broken chunk.
			var planned, alone []Range
			for _, c := range src.calls {
				if len(planned) < len(p.Fetch) && c == p.Fetch[len(planned)] {
					planned = append(planned, c)
				} else {
					alone = append(alone, c)
				}
			}
			if !slices.Equal(planned, p.Fetch) || !slices.Equal(alone, refetch) {
				t.Errorf("ranges opened %v, want the plan's %v and the broken chunks' %v", src.calls, p.Fetch, refetch)
			}
			src.check(t)
		})
	}
}

// A source that fails, or gives bytes the index does not describe, fails
// the read: what was read before is the blob's, and nothing after.
func TestReaderSourceFails(t *testing.T) {
	f := getFixture()
	reset := errors.New("connection reset by peer")
	flip := func(at func(n int64) int64) func(r Range, b []byte) ([]byte, error) {
		return func(r Range, b []byte) ([]byte, error) {
			b[at(r.Len)] ^= 0x80
			return b, nil
		}
	}
	cut := func(at func(n int64) int64) func(r Range, b []byte) ([]byte, error) {
		return func(r Range, b []byte) ([]byte, error) { return b[:at(r.Len)], nil }
	}
	fail := func(err error) func(r Range, b []byte) ([]byte, error) {
		return func(Range, []byte) ([]byte, error) { return nil, err }
	}
	start := func(int64) int64 { return 0 }
	middle := func(n int64) int64 { return n / 2 }
	end := func(n int64) int64 { return n - 1 }
	for _, tt := range []struct {
		name    string
		lying   bool // the seed's first chunk changed, so it is fetched alone
		serve   func(r Range, b []byte) ([]byte, error)
		at      func(n int64) int64 // the first byte of the range that is wrong
		wantIs  error               // if set, errors.Is(err, wantIs)
		wantSay string              // if set, in the error
	}{
		{"wrong first byte", false, flip(start), start, nil, "do not match its index"},
		{"wrong byte in the middle", false, flip(middle), middle, nil, "do not match its index"},
		{"wrong last byte", false, flip(end), end, nil, "do not match its index"},
		{"no ranges", false, fail(fmt.Errorf("%w: the server answered with the whole blob", ErrNoRange)), start, ErrNoRange, ""},
		{"error", false, fail(reset), start, reset, ""},
		{"one byte short", false, cut(end), end, io.ErrUnexpectedEOF, ""},
		{"half", false, cut(middle), middle, io.ErrUnexpectedEOF, ""},
		{"nothing", false, cut(start), start, io.ErrUnexpectedEOF, ""},
		{"refetch, wrong bytes", true, flip(middle), middle, nil, "do not match its index"},
		{"refetch, no ranges", true, fail(ErrNoRange), start, ErrNoRange, ""},
		{"refetch, short", true, cut(end), end, io.ErrUnexpectedEOF, ""},
		{"refetch, nothing", true, cut(start), start, io.ErrUnexpectedEOF, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seed := bytes.Clone(f.v1)
			p, l := plan(t, f.x, []Seed{seedOf("v1", seed)})
			src := &source{blob: f.v2, serve: tt.serve}
			first := p.Fetch[0] // the first range asked
			if tt.lying {
				i := slices.IndexFunc(p.From, func(l Loc) bool { return l.Seed == 0 })
				seed[p.From[i].Off] ^= 1
				first = Range{f.x.Chunks[i].Off, int64(f.x.Chunks[i].Len)}
				if first.Off >= p.Fetch[0].Off {
					t.Fatalf("the seed's first chunk %d is after the first range %v", i, p.Fetch[0])
				}
				// Only the broken chunk's range fails.
				serve := tt.serve
				src.serve = func(r Range, b []byte) ([]byte, error) {
					if slices.Contains(p.Fetch, r) {
						return b, nil
					}
					return serve(r, b)
				}
			}
			// The reader must give every chunk before the one with the
			// first wrong byte, and none after.
			wrong := first.Off + tt.at(first.Len)
			bad := f.x.Chunks[slices.IndexFunc(f.x.Chunks, func(c Chunk) bool { return c.Off+int64(c.Len) > wrong })].Off

			r := NewReader(context.Background(), p, src, l.logf)
			got, err := readAll(r)
			if err == nil {
				t.Fatalf("read %d bytes and no error", len(got))
			}
			t.Logf("Read: %v", err)
			if errors.Is(err, io.EOF) {
				t.Errorf("Read: %v, which says the blob ended", err)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Read: %v, want an error wrapping %v", err, tt.wantIs)
			}
			if tt.wantSay != "" && !strings.Contains(err.Error(), tt.wantSay) {
				t.Errorf("Read: %q, want it to say %q", err, tt.wantSay)
			}
			if int64(len(got)) != bad || !bytes.Equal(got, f.v2[:len(got)]) {
				t.Errorf("read %d bytes before the error, want the blob's first %d (the chunks before the wrong byte at %d)", len(got), bad, wrong)
			}
			if n, err2 := r.Read(make([]byte, 10)); n != 0 || err2 != err {
				t.Errorf("Read after the error = %d, %v; want 0, %v", n, err2, err)
			}
			src.check(t)
		})
	}
}

func TestReaderContext(t *testing.T) {
	f := getFixture()
	for _, tt := range []struct {
		name  string
		seeds []Seed
		after int // bytes read before the context ends
	}{
		{"cancelled before reading", []Seed{seedOf("v1", f.v1)}, 0},
		{"cancelled while fetching", nil, 1 << 20},
		{"cancelled while reading a seed", []Seed{seedOf("v2", f.v2)}, 1 << 20},
		{"cancelled with seeds and fetching", []Seed{seedOf("v1", f.v1)}, 2 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, l := plan(t, f.x, tt.seeds)
			src := &source{blob: f.v2}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := NewReader(ctx, p, src, l.logf)
			head := make([]byte, tt.after)
			if _, err := io.ReadFull(r, head); err != nil {
				t.Fatalf("Read: %v", err)
			}
			cancel()
			rest, err := readAll(r)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Read after cancel: %v, want %v", err, context.Canceled)
			}
			got := append(head, rest...)
			if len(got) >= len(f.v2) || !bytes.Equal(got, f.v2[:len(got)]) {
				t.Errorf("read %d bytes of %d, want fewer and the blob's", len(got), len(f.v2))
			}
			src.check(t)
		})
	}
}

// The blob rebuilt is checked as a whole against the index's SHA-256: a
// seed's chunk whose bytes keep the chunk's CRC-32C (a collision) passes
// the chunk's check and fails the blob's, and so does an index whose
// chunks are not the blob it names. The Reader ends in an error, never
// io.EOF.
func TestReaderChecksBlob(t *testing.T) {
	f := getFixture()
	for _, tt := range []struct {
		name string
		edit func(t *testing.T, x *Index, p *Plan, seed []byte)
	}{
		{"a seed's chunk forged to its CRC-32C", func(t *testing.T, x *Index, p *Plan, seed []byte) {
			i := slices.IndexFunc(p.From, func(l Loc) bool { return l.Seed == 0 })
			c, l := x.Chunks[i], p.From[i]
			b := seed[l.Off : l.Off+int64(c.Len)]
			b[100] ^= 0x5a
			if err := crcforge.Forge(b, 200, c.CRC); err != nil {
				t.Fatal(err)
			}
		}},
		{"an index naming another blob", func(t *testing.T, x *Index, p *Plan, seed []byte) { x.SHA256[0] ^= 1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := *f.x
			seed := bytes.Clone(f.v1)
			p, l := plan(t, &x, []Seed{seedOf("v1", seed)})
			tt.edit(t, &x, p, seed)
			r := NewReader(context.Background(), p, &source{blob: f.v2}, l.logf)
			got, err := readAll(r)
			if err == nil || err == io.EOF || !strings.Contains(err.Error(), "SHA-256") {
				t.Fatalf("Read: %d bytes, %v; want an error naming the blob's SHA-256", len(got), err)
			}
			if n, err2 := r.Read(make([]byte, 1)); n != 0 || err2 != err {
				t.Errorf("Read after the error = %d, %v; want 0, the same error", n, err2)
			}
			if st := r.Stats(); st.Refetched != 0 {
				t.Errorf("Stats = %+v: want nothing refetched (the chunk's CRC matched)", st)
			}
		})
	}
}

// Close stops the reading wherever it is: the range being read is
// closed when Close returns, and a Read after it fails.
func TestReaderClose(t *testing.T) {
	f := getFixture()
	for _, after := range []int{0, 1, 1 << 20, 3 << 20} {
		t.Run(fmt.Sprintf("after %d bytes", after), func(t *testing.T) {
			p, l := plan(t, f.x, []Seed{seedOf("v1", f.v1)})
			src := &source{blob: f.v2}
			r := NewReader(context.Background(), p, src, l.logf)
			if _, err := io.ReadFull(r, make([]byte, after)); err != nil {
				t.Fatalf("Read: %v", err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			src.check(t)
			if n, err := r.Read(make([]byte, 10)); n != 0 || err == nil || err == io.EOF {
				t.Errorf("Read after Close = %d, %v; want an error", n, err)
			}
		})
	}
}

// With want set, IndexSeeds keeps only the chunks of the blob: a seed of
// other bytes gives nothing, and the plan is the one without want.
func TestIndexSeedsWant(t *testing.T) {
	f := getFixture()
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		seeds []Seed
	}{
		{"unrelated seeds", []Seed{seedOf("noise", randBytes(31, 2<<20)), seedOf("more noise", randBytes(32, 1<<20))}},
		{"the previous blob", []Seed{seedOf("v1", f.v1)}},
		{"the previous blob and noise", []Seed{seedOf("noise", randBytes(31, 2<<20)), seedOf("v1", f.v1)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			all, err := IndexSeeds(ctx, tt.seeds, f.x.Params, nil, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			some, err := IndexSeeds(ctx, tt.seeds, f.x.Params, f.x, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			inBlob := map[key]bool{}
			for _, c := range f.x.Chunks {
				inBlob[keyOf(c)] = true
			}
			kept := 0
			for h := range all.where {
				if inBlob[h] {
					kept++
				}
			}
			if len(all.where) <= kept {
				t.Fatalf("without want, %d chunks kept, %d of them the blob's: want others too", len(all.where), kept)
			}
			if len(some.where) != kept {
				t.Errorf("with want, %d chunks kept, want the %d of the blob's", len(some.where), kept)
			}
			for h := range some.where {
				if !inBlob[h] {
					t.Errorf("with want, kept chunk %+v, not the blob's", h)
				}
			}
			pa, ps := NewPlan(f.x, all), NewPlan(f.x, some)
			checkPlan(t, ps)
			if !slices.Equal(pa.From, ps.From) || !slices.Equal(pa.Fetch, ps.Fetch) {
				t.Errorf("the plans with and without want differ")
			}
			if kept == 0 && !slices.Equal(ps.Fetch, []Range{{0, f.x.Size}}) {
				t.Errorf("Fetch = %v, want all of the blob", ps.Fetch)
			}
		})
	}
}

// A seed that cannot be read to its end is used up to where it failed.
func TestIndexSeedsReadError(t *testing.T) {
	f := getFixture()
	const failAt = 2 << 20
	v1Plan, _ := plan(t, f.x, []Seed{seedOf("v1", f.v1)})
	for _, tt := range []struct {
		name      string
		failAt    int64
		good      bool // a good copy of v1 follows the broken seed
		wantFirst bool // the broken seed gives chunks
	}{
		{"fails mid-way", failAt, false, true},
		{"fails at once", 0, false, false},
		{"fails mid-way, another seed follows", failAt, true, true},
		{"fails at once, another seed follows", 0, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seeds := []Seed{{Name: "broken disk", R: &seedAt{b: f.v1, fail: tt.failAt, err: errors.New("input/output error")}, Size: int64(len(f.v1))}}
			if tt.good {
				seeds = append(seeds, seedOf("v1", f.v1))
			}
			p, l := plan(t, f.x, seeds)
			checkPlan(t, p)
			if len(l.lines) != 1 || !strings.Contains(l.lines[0], "broken disk") || !strings.Contains(l.lines[0], "input/output error") {
				t.Errorf("logged %q, want one line naming the seed and its error", l.lines)
			}
			if got := p.Reused[0] > 0; got != tt.wantFirst {
				t.Errorf("the broken seed gives %d bytes, want some: %v", p.Reused[0], tt.wantFirst)
			}
			for i, from := range p.From {
				if from.Seed == 0 && from.Off+int64(f.x.Chunks[i].Len) > tt.failAt {
					t.Errorf("chunk %d from the broken seed at %d, past where it failed", i, from.Off)
				}
			}
			if tt.good {
				if p.Fetched != v1Plan.Fetched || p.Reused[1] == 0 {
					t.Errorf("Fetched = %d, Reused = %v; want %d fetched, as from v1 alone, and the rest from both", p.Fetched, p.Reused, v1Plan.Fetched)
				}
			} else if lost := failAt - p.Reused[0]; tt.wantFirst && lost > v1Plan.Fetched+2*int64(f.x.Params.Max) {
				// The chunker reads ahead by up to twice Max: the chunks
				// there are lost with the read that failed.
				t.Errorf("the broken seed gives %d bytes of the %d before it failed, want all but the changed ones and 2×Max", p.Reused[0], failAt)
			}

			src := &source{blob: f.v2}
			r := NewReader(context.Background(), p, src, l.logf)
			got, err := readAll(r)
			if err != nil || !bytes.Equal(got, f.v2) {
				t.Fatalf("Read: %d bytes, %v; want the blob's %d", len(got), err, len(f.v2))
			}
			if r.Stats().Refetched != 0 || r.Stats().Reused != f.x.Size-p.Fetched {
				t.Errorf("Stats = %+v, want nothing refetched", r.Stats())
			}
		})
	}
}

// cancelAt cancels a context once a read reaches an offset.
type cancelAt struct {
	io.ReaderAt
	at     int64
	cancel func()
}

func (c *cancelAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > c.at {
		c.cancel()
	}
	return c.ReaderAt.ReadAt(p, off)
}

func TestIndexSeedsRefuses(t *testing.T) {
	f := getFixture()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	midway, cancelMidway := context.WithCancel(context.Background())
	defer cancelMidway()
	v1 := seedOf("v1", f.v1)
	for _, tt := range []struct {
		name   string
		ctx    context.Context
		seeds  []Seed
		p      Params
		wantIs error
	}{
		{"cancelled", cancelled, []Seed{v1}, DefaultParams, context.Canceled},
		{"cancelled mid-way", midway, []Seed{{Name: "v1", R: &cancelAt{bytes.NewReader(f.v1), 1 << 20, cancelMidway}, Size: int64(len(f.v1))}, v1}, DefaultParams, context.Canceled},
		{"bad params", context.Background(), []Seed{v1}, Params{Min: 1, Avg: 2, Max: 3}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &logger{t: t}
			s, err := IndexSeeds(tt.ctx, tt.seeds, tt.p, f.x, l.logf)
			if err == nil || (tt.wantIs != nil && !errors.Is(err, tt.wantIs)) {
				t.Errorf("IndexSeeds = %v, %v; want an error wrapping %v", s, err, tt.wantIs)
			}
		})
	}
}

// TestIndexSeedsSplit: a seed large enough to be cut in parts, one a core,
// gives every chunk a single cut gives: a blob equal to the seed, or to the
// seed with a change in the middle, is planned as if it were cut whole.
func TestIndexSeedsSplit(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	var key [32]byte
	key[0] = 42
	seed := make([]byte, 3*splitSize+12345)
	rand.NewChaCha8(key).Read(seed)
	changed := bytes.Clone(seed)
	copy(changed[len(changed)/2:], bytes.Repeat([]byte{7}, 100<<10))
	for _, c := range []struct {
		name string
		blob []byte
	}{{"the seed itself", seed}, {"a change in the middle", changed}} {
		t.Run(c.name, func(t *testing.T) {
			x, err := Build(bytes.NewReader(c.blob), DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			parts := split([]Seed{{Size: int64(len(seed))}}, DefaultParams)
			if len(parts) != 3 {
				t.Fatalf("%d parts, want 3 (4 cores, %d bytes)", len(parts), len(seed))
			}
			whole, err := IndexSeeds(context.Background(), []Seed{{Name: "s", R: bytes.NewReader(seed), Size: int64(len(seed))}}, DefaultParams, x, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			p := NewPlan(x, whole)
			// What one cut of the seed gives.
			one := map[[32]byte]bool{}
			Cut(bytes.NewReader(seed), DefaultParams, func(_ int64, data []byte) error { one[sha256.Sum256(data)] = true; return nil })
			var want int64
			for _, ch := range x.Chunks {
				if !one[ch.SHA256] {
					want += int64(ch.Len)
				}
			}
			if p.Fetched != want {
				t.Errorf("split cut: %d bytes to fetch, a single cut: %d", p.Fetched, want)
			}
			for i, l := range p.From {
				if l.Seed < 0 {
					continue
				}
				ch := x.Chunks[i]
				if sha256.Sum256(seed[l.Off:l.Off+int64(ch.Len)]) != ch.SHA256 {
					t.Fatalf("chunk %d planned from %d, where the seed holds other bytes", i, l.Off)
				}
			}
		})
	}
}
