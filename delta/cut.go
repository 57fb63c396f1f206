package delta

import (
	"io"
	"sync"

	"github.com/jotfs/fastcdc-go"
)

// chunkerMu guards fastcdc's package-level table: NewChunker XORs its seed
// into it on every call (a no-op for seed 0, but a write all the same) and
// every chunker reads it as it cuts. Cut holds it for reading only while
// cutting, never while it reads its input or calls fn, so a Cut waiting on
// its input holds up no other.
var chunkerMu sync.RWMutex

// Cut cuts r into content-defined chunks with p (FastCDC with
// normalization 2, seed 0) and calls fn with each, in order. data is valid
// only until fn returns.
func Cut(r io.Reader, p Params, fn func(off int64, data []byte) error) error {
	chunkerMu.Lock()
	c, err := fastcdc.NewChunker(unlockedReader{r}, fastcdc.Options{MinSize: int(p.Min), AverageSize: int(p.Avg), MaxSize: int(p.Max)})
	chunkerMu.Unlock()
	if err != nil {
		return err
	}
	next := func() (fastcdc.Chunk, error) {
		chunkerMu.RLock()
		defer chunkerMu.RUnlock()
		return c.Next()
	}
	for {
		ch, err := next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(int64(ch.Offset), ch.Data); err != nil {
			return err
		}
	}
}

// unlockedReader reads r with chunkerMu released: a chunker reads its
// input from within Next.
type unlockedReader struct{ r io.Reader }

func (u unlockedReader) Read(p []byte) (int, error) {
	chunkerMu.RUnlock()
	defer chunkerMu.RLock()
	return u.r.Read(p)
}
