package delta

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Source reads byte ranges of a blob: a registry's blob by HTTP Range, a
// local file.
type Source interface {
	// OpenRange returns the blob's bytes [off, off+n). It fails with an
	// error wrapping ErrNoRange when the source cannot serve ranges (a
	// registry answering with the whole blob, or 416).
	OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
}

// ErrNoRange marks a source that does not serve byte ranges: the blob is
// then read whole, as without an index.
var ErrNoRange = errors.New("the source does not serve byte ranges")

// Stats count where a Reader's bytes came from.
type Stats struct {
	Reused    int64 // bytes copied from seeds, their hashes checked
	Fetched   int64 // bytes read from the source
	Requests  int   // ranges opened on the source
	Refetched int64 // bytes a seed should have given but no longer held: fetched
}

// Reader yields the blob a Plan describes, chunk by chunk. A seed's chunk
// is read and compared with the CRC-32C its bytes had when IndexSeeds cut
// them and found their SHA-256 in the index; a chunk the seed no longer
// holds (the disk changed since) is fetched alone from the source. The
// others come from the plan's ranges, opened one at a time, in order, each
// chunk's SHA-256 checked against the index. It holds one chunk in memory.
//
// A seed's chunk is not hashed with SHA-256 again: that would be a third
// pass over most of the blob. A change CRC-32C does not see (one crafted
// for it, between the cut and the copy) still cannot be staged: the
// stager checks the whole blob against the manifest's digest, and gives
// the delta up if it differs.
type Reader struct {
	ctx   context.Context
	plan  *Plan
	src   Source
	logf  func(string, ...any)
	Stats Stats

	i      int // next chunk
	fetch  int // next range of plan.Fetch
	body   io.ReadCloser
	bodyAt int64 // blob offset of body's next byte
	bodyTo int64 // end of body's range
	buf    []byte
	cur    []byte // what is left of the current chunk
	err    error
	warned map[int]bool // seeds found changed, said once each
}

// NewReader reads the blob of p from its seeds and from src.
func NewReader(ctx context.Context, p *Plan, src Source, logf func(string, ...any)) *Reader {
	return &Reader{ctx: ctx, plan: p, src: src, logf: logf, buf: make([]byte, p.Index.Params.Max), warned: map[int]bool{}}
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.i == len(r.plan.Index.Chunks) {
			r.closeBody()
			r.err = io.EOF
			return 0, io.EOF
		}
		if r.err = r.next(); r.err != nil {
			r.closeBody()
			return 0, r.err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close releases the range being read.
func (r *Reader) Close() error {
	r.closeBody()
	return nil
}

func (r *Reader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
}

// next puts chunk r.i in r.cur.
func (r *Reader) next() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	c := r.plan.Index.Chunks[r.i]
	buf := r.buf[:c.Len]
	if from := r.plan.From[r.i]; from.Seed >= 0 {
		sd := r.plan.Seeds.list[from.Seed]
		n, err := sd.R.ReadAt(buf, from.Off)
		if n == len(buf) {
			err = nil
		}
		if err == nil && crc32.Checksum(buf, castagnoli) == from.CRC {
			r.Stats.Reused += int64(c.Len)
			r.cur, r.i = buf, r.i+1
			return nil
		}
		if !r.warned[from.Seed] {
			r.warned[from.Seed] = true
			why := "its bytes changed since it was indexed"
			if err != nil {
				why = err.Error()
			}
			r.logf("delta: seed %s: the chunk at %d no longer holds what it did (%s): fetching it, and any other it should give", sd.Name, from.Off, why)
		}
		if err := r.fetchAlone(c, buf); err != nil {
			return err
		}
		r.Stats.Refetched += int64(c.Len)
	} else {
		if r.body == nil {
			if r.fetch == len(r.plan.Fetch) || r.plan.Fetch[r.fetch].Off != c.Off {
				return fmt.Errorf("delta: chunk %d at %d is in no planned range", r.i, c.Off)
			}
			rg := r.plan.Fetch[r.fetch]
			r.fetch++
			body, err := r.open(rg.Off, rg.Len)
			if err != nil {
				return err
			}
			r.body, r.bodyAt, r.bodyTo = body, rg.Off, rg.Off+rg.Len
		}
		if _, err := io.ReadFull(r.body, buf); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // wrapped, io.EOF says the blob ended
			}
			return fmt.Errorf("delta: reading bytes [%d, %d) of the blob: %w", c.Off, c.Off+int64(c.Len), err)
		}
		r.Stats.Fetched += int64(c.Len)
		if r.bodyAt += int64(c.Len); r.bodyAt == r.bodyTo {
			r.closeBody()
		}
	}
	if sha256.Sum256(buf) != c.SHA256 {
		return fmt.Errorf("delta: bytes [%d, %d) of the blob from its source do not match its index", c.Off, c.Off+int64(c.Len))
	}
	r.cur, r.i = buf, r.i+1
	return nil
}

func (r *Reader) open(off, n int64) (io.ReadCloser, error) {
	body, err := r.src.OpenRange(r.ctx, off, n)
	if err != nil {
		return nil, fmt.Errorf("delta: bytes [%d, %d) of the blob: %w", off, off+n, err)
	}
	r.Stats.Requests++
	return body, nil
}

// fetchAlone reads chunk c from the source into buf, on a range of its own.
func (r *Reader) fetchAlone(c Chunk, buf []byte) error {
	body, err := r.open(c.Off, int64(c.Len))
	if err != nil {
		return err
	}
	defer body.Close()
	if _, err := io.ReadFull(body, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("delta: reading bytes [%d, %d) of the blob: %w", c.Off, c.Off+int64(c.Len), err)
	}
	r.Stats.Fetched += int64(c.Len)
	return nil
}
