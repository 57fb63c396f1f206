package delta

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
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
	Reused    int64 // bytes copied from seeds, their CRC-32C checked
	Fetched   int64 // bytes read from the source
	Requests  int   // ranges opened on the source
	Refetched int64 // bytes a seed should have given but did not hold: fetched
}

// Reader yields the blob a Plan describes, and checks it as the blob the
// index names: its SHA-256 as a whole against the index's (the layer's
// digest: the stager checks the two are one), so that a delta changes
// where the bytes come from, never which bytes are accepted. A blob that
// differs ends in an error in place of io.EOF.
//
// Within the blob, each chunk is checked on its way: a seed's chunk
// against the index's CRC-32C, and one whose CRC differs (the disk
// changed since the seed was cut) is fetched alone from the source, with
// one line a seed; fetched chunks against the index's SHA-256, so that a
// source serving other bytes is caught at the range it served. A seed's
// bytes made to match a chunk's CRC-32C (a collision, crafted or not)
// pass the chunk's check and fail the blob's: the stager then gives the
// delta up for a whole pull.
//
// The reading and hashing run on a goroutine of their own, up to three
// buffers of 1 MiB ahead of Read (the stager hashes each artifact as it
// writes it: the two hashes run on two cores), and a run of chunks that
// lie one after the other in a seed is read in one call.
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
	// finished: the producer yielded the whole blob, and it is the
	// index's; any other end of out is an error.
	finished atomic.Bool
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

// bufSize is the size of the producer's buffers, each holding whole
// chunks: the consumer takes a MiB at a time, and a run of chunks that
// lie one after the other in a seed is read in one call.
const bufSize = 1 << 20

// start starts the producer, with three buffers.
func (r *Reader) start() {
	size := max(bufSize, int(r.plan.Index.Params.Max))
	ctx, cancel := context.WithCancel(r.ctx)
	r.cancel, r.out, r.free, r.done = cancel, make(chan piece, 3), make(chan []byte, 3), make(chan struct{})
	for range 3 {
		r.free <- make([]byte, size)
	}
	go r.run(ctx)
}

// run puts the checked chunks in r.out, in order and as many whole ones
// a buffer as fit, then closes it. A buffer cut short by an error carries
// the chunks checked before it, and the error.
func (r *Reader) run(ctx context.Context) {
	defer close(r.done)
	defer close(r.out)
	defer r.closeBody()
	chunks := r.plan.Index.Chunks
	blob := sha256.New()
	for r.i < len(chunks) {
		var buf []byte
		select {
		case buf = <-r.free:
		case <-ctx.Done():
			return
		}
		used := 0
		var err error
		for r.i < len(chunks) && used+int(chunks[r.i].Len) <= len(buf) {
			var n int
			n, err = r.fill(ctx, buf[used:])
			used += n
			if err != nil {
				r.closeBody()
				break
			}
		}
		blob.Write(buf[:used])
		if err == nil && r.i == len(chunks) && [32]byte(blob.Sum(nil)) != r.plan.Index.SHA256 {
			err = fmt.Errorf("delta: the blob rebuilt has another SHA-256 than its index says: a seed's chunk matched its length and CRC-32C with other bytes, or the index does not describe the blob")
		}
		select {
		case r.out <- piece{buf: buf[:used], err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
	if len(chunks) == 0 && [32]byte(blob.Sum(nil)) != r.plan.Index.SHA256 {
		select {
		case r.out <- piece{err: errors.New("delta: an empty blob, and its index names another SHA-256")}:
		case <-ctx.Done():
		}
		return
	}
	r.finished.Store(true)
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
		case !ok && r.finished.Load():
			r.err = io.EOF
		case !ok && r.ctx.Err() != nil:
			r.err = r.ctx.Err()
		case !ok:
			r.err = errors.New("delta: the reading stopped before the blob's end")
		default:
			r.held, r.cur, r.err = pc.buf, pc.buf, pc.err
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

// fill puts chunk r.i, and the chunks after it that lie right after it
// in the same seed, into dst (as many whole ones as fit), checks each
// against the index, and advances r.i past those done; it returns the
// bytes done.
func (r *Reader) fill(ctx context.Context, dst []byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	chunks, from := r.plan.Index.Chunks, r.plan.From
	if from[r.i].Seed < 0 {
		c := chunks[r.i]
		if err := r.fetchNext(ctx, c, dst[:c.Len]); err != nil {
			return 0, err
		}
		r.i++
		return int(c.Len), nil
	}
	// The run: read in one call.
	first := from[r.i]
	end, n := r.i, 0
	for end < len(chunks) && from[end].Seed == first.Seed && from[end].Off == first.Off+int64(n) && n+int(chunks[end].Len) <= len(dst) {
		n += int(chunks[end].Len)
		end++
	}
	sd := r.plan.Seeds.list[first.Seed]
	got, _ := sd.R.ReadAt(dst[:n], first.Off)
	done := 0
	for ; r.i < end; r.i++ {
		c, l := chunks[r.i], from[r.i]
		b := dst[done : done+int(c.Len)]
		var err error
		if done+len(b) > got {
			// Past where the run's read stopped: read alone.
			var k int
			if k, err = sd.R.ReadAt(b, l.Off); k == len(b) {
				err = nil
			}
		}
		if err == nil && crc32.Checksum(b, castagnoli) == c.CRC {
			r.reused.Add(int64(c.Len))
			done += len(b)
			continue
		}
		if !r.warned[l.Seed] {
			r.warned[l.Seed] = true
			why := "its CRC-32C is not the index's: the bytes changed since the seed was cut"
			if err != nil {
				why = err.Error()
			}
			r.logf("delta: seed %s: the chunk at %d is not the one it was taken for (%s): fetching it, and any other it should give", sd.Name, l.Off, why)
		}
		if err := r.fetchAlone(ctx, c, b); err != nil {
			return done, err
		}
		if err := fetchedMatches(c, b); err != nil {
			return done, err
		}
		r.refetched.Add(int64(c.Len))
		done += len(b)
	}
	return done, nil
}

// fetchNext reads chunk c, the next of the plan's ranges, into buf and
// checks it.
func (r *Reader) fetchNext(ctx context.Context, c Chunk, buf []byte) error {
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
	return fetchedMatches(c, buf)
}

// fetchedMatches checks chunk c's bytes, read from the source, against
// the index's SHA-256.
func fetchedMatches(c Chunk, b []byte) error {
	if sha256.Sum256(b) != c.SHA256 {
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
