package delta

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
)

// Seed is bytes the machine holds that may share chunks with a blob: a
// slot's kernel or initramfs, a staged artifact. What it holds is not
// trusted: a Reader checks each chunk's hash when it copies it.
type Seed struct {
	Name string // for messages and statistics, e.g. "slot a initramfs"
	R    io.ReaderAt
	Size int64
}

// Loc is where a chunk lies in a seed.
type Loc struct {
	Seed int // index in the seeds given to IndexSeeds
	Off  int64
}

// key is what a seed's chunk is found by: its length and CRC-32C. A
// match is a candidate, not a proof: the Reader checks the chunk's SHA-256
// when it copies it, and fetches it when that differs.
type key struct{ len, crc uint32 }

func keyOf(c Chunk) key { return key{c.Len, c.CRC} }

// Seeds maps the length and CRC-32C of each chunk of the seeds, cut with
// the index's parameters, to where it lies (the first place it was found).
type Seeds struct {
	list  []Seed
	where map[key]Loc
}

// IndexSeeds cuts every seed with p and records where each chunk lies,
// keeping only the chunks want holds (nil: all), which bounds the map by
// the blob's index however large the seeds. A seed that cannot be read is
// left out from where it failed, with a line to logf.
//
// It computes no SHA-256: a chunk's CRC-32C names it among the index's
// (see Reader for how it is then checked), and hashing every byte of the
// seeds with SHA-256 cost more than cutting them, before the first byte
// could be staged.
func IndexSeeds(ctx context.Context, seeds []Seed, p Params, want *Index, logf func(string, ...any)) (*Seeds, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	var wanted map[key]bool
	if want != nil {
		wanted = make(map[key]bool, len(want.Chunks))
		for _, c := range want.Chunks {
			wanted[keyOf(c)] = true
		}
	}
	s := &Seeds{list: seeds, where: map[key]Loc{}}
	parts := split(seeds, p)
	type result struct {
		where map[key]Loc
		err   error
	}
	results := make([]result, len(parts))
	sem := make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for k, pt := range parts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			res := &results[k]
			res.where = map[key]Loc{}
			sd := seeds[pt.seed]
			r := &ctxReader{ctx: ctx, r: io.NewSectionReader(sd.R, pt.start, pt.end-pt.start)}
			res.err = Cut(r, p, func(off int64, data []byte) error {
				k := key{uint32(len(data)), crc32.Checksum(data, castagnoli)}
				if wanted != nil && !wanted[k] {
					return nil
				}
				if _, ok := res.where[k]; !ok {
					res.where[k] = Loc{Seed: pt.seed, Off: pt.start + off}
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// In order of seed and offset: the first place a chunk lies wins.
	failed := map[int]bool{}
	for k, pt := range parts {
		res := results[k]
		for h, l := range res.where {
			if cur, ok := s.where[h]; !ok || cur.Seed == l.Seed && cur.Off > l.Off {
				s.where[h] = l
			}
		}
		if res.err != nil && !failed[pt.seed] {
			failed[pt.seed] = true
			logf("delta: seed %s: %v: using what was read before", seeds[pt.seed].Name, res.err)
		}
	}
	return s, nil
}

// part is a piece of a seed that IndexSeeds cuts on its own: [start, end)
// of seed.
type part struct {
	seed       int
	start, end int64
}

// Seeds larger than splitSize are cut in parts, one a core, each reaching
// splitOverlap into the next: a cut started mid-seed finds the cut points
// of one started earlier within a few chunks (content-defined points
// depend only on the bytes before them, back to the previous point), and
// the overlap lets the earlier part find the chunks across the boundary.
const (
	splitSize    = 16 << 20
	splitOverlap = 2 << 20 // at least; 16 chunks of the largest size
)

func split(seeds []Seed, p Params) []part {
	overlap := max(splitOverlap, 16*int64(p.Max))
	n := int64(max(1, runtime.GOMAXPROCS(0)))
	var out []part
	for i, sd := range seeds {
		k := min(n, sd.Size/splitSize)
		if k < 2 {
			out = append(out, part{i, 0, sd.Size})
			continue
		}
		step := sd.Size / k
		for j := range k {
			start, end := j*step, min(sd.Size, (j+1)*step+overlap)
			if j == k-1 {
				end = sd.Size
			}
			out = append(out, part{i, start, end})
		}
	}
	return out
}

// Find says where a chunk with c's length and CRC-32C lies.
func (s *Seeds) Find(c Chunk) (Loc, bool) {
	l, ok := s.where[keyOf(c)]
	return l, ok
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, fmt.Errorf("cutting seeds: %w", err)
	}
	return c.r.Read(p)
}

// castagnoli is CRC-32C's table: the CPU computes it (SSE 4.2, ARMv8),
// tens of times faster than SHA-256.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)
