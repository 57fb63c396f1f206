package delta

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
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

// Seeds maps the SHA-256 of each chunk of the seeds, cut with the index's
// parameters, to where it lies (the first place it was found).
type Seeds struct {
	list  []Seed
	where map[[32]byte]Loc
	Read  int64 // bytes read to cut them
}

// IndexSeeds cuts every seed with p and records where each chunk lies,
// keeping only the chunks want holds (nil: all), which bounds the map by
// the blob's index however large the seeds. A seed that cannot be read is
// left out from where it failed, with a line to logf.
func IndexSeeds(ctx context.Context, seeds []Seed, p Params, want *Index, logf func(string, ...any)) (*Seeds, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	var wanted map[[32]byte]bool
	if want != nil {
		wanted = make(map[[32]byte]bool, len(want.Chunks))
		for _, c := range want.Chunks {
			wanted[c.SHA256] = true
		}
	}
	s := &Seeds{list: seeds, where: map[[32]byte]Loc{}}
	for i, sd := range seeds {
		err := cutHashed(&ctxReader{ctx: ctx, r: io.NewSectionReader(sd.R, 0, sd.Size)}, p, func(off int64, n int, h [32]byte) {
			s.Read += int64(n)
			if wanted != nil && !wanted[h] {
				return
			}
			if _, ok := s.where[h]; !ok {
				s.where[h] = Loc{Seed: i, Off: off}
			}
		})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			logf("delta: seed %s: %v: using what was read before", sd.Name, err)
		}
	}
	return s, nil
}

// Find says where a chunk with this hash lies.
func (s *Seeds) Find(sum [32]byte) (Loc, bool) {
	l, ok := s.where[sum]
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

// cutHashed cuts r with p and calls fn with each chunk's offset, length and
// SHA-256, in order: the cutting and the hashing run on two goroutines
// (two cores), the chunks passed between them in a few buffers of p.Max
// bytes. fn runs on the hashing goroutine, one call at a time.
func cutHashed(r io.Reader, p Params, fn func(off int64, n int, sum [32]byte)) error {
	const depth = 8
	type piece struct {
		off int64
		buf []byte
	}
	pieces, free, done := make(chan piece, depth), make(chan []byte, depth), make(chan struct{})
	for range depth {
		free <- make([]byte, p.Max)
	}
	go func() {
		defer close(done)
		for pc := range pieces {
			fn(pc.off, len(pc.buf), sha256.Sum256(pc.buf))
			free <- pc.buf[:cap(pc.buf)]
		}
	}()
	err := Cut(r, p, func(off int64, data []byte) error {
		b := <-free
		pieces <- piece{off, b[:copy(b, data)]}
		return nil
	})
	close(pieces)
	<-done
	return err
}
