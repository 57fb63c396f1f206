package delta

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
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
	Refetched int64 // bytes a seed should have given but did not hold: fetched
}

// Reader yields the blob a Plan describes, chunk by chunk, each chunk's
// SHA-256 checked against the index before it is yielded. A seed's chunk
// (found by its length and CRC-32C) is read from the seed; one whose
// SHA-256 differs (the disk changed since it was cut, or a CRC that
// matched other bytes) is fetched alone from the source, with one line a
// seed. The others come from the plan's ranges, opened one at a time, in
// order.
//
// The reading and hashing run on a goroutine of their own, a few chunks
// (about 1 MiB) ahead of Read: the stager hashes the whole blob as it
// reads it, and the two hashes then run on two cores.
type Reader struct {
	ctx  context.Context
	plan *Plan
	src  Source
	logf func(string, ...any)

	reused, fetched, refetched atomic.Int64
	requests                   atomic.Int64

	// The producer's state: run's alone.
	i      int // next chunk
	fetch  int // next range of plan.Fetch
	body   io.ReadCloser
	bodyAt int64        // blob offset of body's next byte
	bodyTo int64        // end of body's range
	warned map[int]bool // seeds found changed, said once each

	// Read's side.
	once   sync.Once
	cancel context.CancelFunc
	out    chan piece
	free   chan []byte
	done   chan struct{}
	held   []byte // the buffer cur is in, returned to free when used
	cur    []byte // what is left of the current chunk
	err    error
	closed bool
}

// piece is a checked chunk, or why there is none.
type piece struct {
	buf []byte
	err error
}

// NewReader reads the blob of p from its seeds and from src.
func NewReader(ctx context.Context, p *Plan, src Source, logf func(string, ...any)) *Reader {
	return &Reader{ctx: ctx, plan: p, src: src, logf: logf, warned: map[int]bool{}}
}

// Stats says where the bytes read so far came from. It may be called
// while another goroutine reads.
func (r *Reader) Stats() Stats {
	return Stats{Reused: r.reused.Load(), Fetched: r.fetched.Load(), Requests: int(r.requests.Load()), Refetched: r.refetched.Load()}
}

// start starts the producer: depth buffers of the largest chunk.
func (r *Reader) start() {
	size := int(r.plan.Index.Params.Max)
	depth := max(2, min(8, (1<<20)/size))
	ctx, cancel := context.WithCancel(r.ctx)
	r.cancel, r.out, r.free, r.done = cancel, make(chan piece, depth), make(chan []byte, depth), make(chan struct{})
	for range depth {
		r.free <- make([]byte, size)
	}
	go r.run(ctx)
}

// run puts the checked chunks in r.out, in order, then closes it.
func (r *Reader) run(ctx context.Context) {
	defer close(r.done)
	defer close(r.out)
	defer r.closeBody()
	for r.i < len(r.plan.Index.Chunks) {
		var buf []byte
		select {
		case buf = <-r.free:
		case <-ctx.Done():
			return
		}
		pc := piece{buf: buf[:r.plan.Index.Chunks[r.i].Len]}
		if err := r.next(ctx, pc.buf); err != nil {
			r.closeBody()
			pc = piece{err: err}
		}
		select {
		case r.out <- pc:
		case <-ctx.Done():
			return
		}
		if pc.err != nil {
			return
		}
		r.i++
	}
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("delta: read after Close")
	}
	r.once.Do(r.start)
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.held != nil {
			r.free <- r.held[:cap(r.held)]
			r.held = nil
		}
		pc, ok := <-r.out
		switch {
		case !ok && r.ctx.Err() != nil:
			r.err = r.ctx.Err()
		case !ok:
			r.err = io.EOF
		case pc.err != nil:
			r.err = pc.err
		default:
			r.held, r.cur = pc.buf, pc.buf
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops the reading and releases the range being read.
func (r *Reader) Close() error {
	r.closed = true
	r.once.Do(func() {}) // never started now
	if r.cancel != nil {
		r.cancel()
		<-r.done
	}
	return nil
}

func (r *Reader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
}

// next reads chunk r.i into buf and checks it.
func (r *Reader) next(ctx context.Context, buf []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := r.plan.Index.Chunks[r.i]
	if from := r.plan.From[r.i]; from.Seed >= 0 {
		sd := r.plan.Seeds.list[from.Seed]
		n, err := sd.R.ReadAt(buf, from.Off)
		if n == len(buf) {
			err = nil
		}
		if err == nil && sha256.Sum256(buf) == c.SHA256 {
			r.reused.Add(int64(c.Len))
			return nil
		}
		if !r.warned[from.Seed] {
			r.warned[from.Seed] = true
			why := "its SHA-256 is not the index's: the bytes changed since the seed was cut, or only their CRC-32C matched"
			if err != nil {
				why = err.Error()
			}
			r.logf("delta: seed %s: the chunk at %d is not the one it was taken for (%s): fetching it, and any other it should give", sd.Name, from.Off, why)
		}
		if err := r.fetchAlone(ctx, c, buf); err != nil {
			return err
		}
		r.refetched.Add(int64(c.Len))
	} else {
		if r.body == nil {
			if r.fetch == len(r.plan.Fetch) || r.plan.Fetch[r.fetch].Off != c.Off {
				return fmt.Errorf("delta: chunk %d at %d is in no planned range", r.i, c.Off)
			}
			rg := r.plan.Fetch[r.fetch]
			r.fetch++
			body, err := r.open(ctx, rg.Off, rg.Len)
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
		r.fetched.Add(int64(c.Len))
		if r.bodyAt += int64(c.Len); r.bodyAt == r.bodyTo {
			r.closeBody()
		}
	}
	if sha256.Sum256(buf) != c.SHA256 {
		return fmt.Errorf("delta: bytes [%d, %d) of the blob from its source do not match its index", c.Off, c.Off+int64(c.Len))
	}
	return nil
}

func (r *Reader) open(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	body, err := r.src.OpenRange(ctx, off, n)
	if err != nil {
		return nil, fmt.Errorf("delta: bytes [%d, %d) of the blob: %w", off, off+n, err)
	}
	r.requests.Add(1)
	return body, nil
}

// fetchAlone reads chunk c from the source into buf, on a range of its own.
func (r *Reader) fetchAlone(ctx context.Context, c Chunk, buf []byte) error {
	body, err := r.open(ctx, c.Off, int64(c.Len))
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
	r.fetched.Add(int64(c.Len))
	return nil
}
