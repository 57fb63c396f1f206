package stage

import (
	"io"
	"sync"
)

// readAhead reads r in a goroutine of its own, a bounded number of buffers
// ahead of the consumer, so that fetching and verifying a blob and writing
// its artifacts run on two cores. Memory is depth × size bytes.
type readAhead struct {
	full    chan []byte
	free    chan []byte
	buf     []byte // being consumed
	off     int
	readErr error
	stop    chan struct{}
	once    sync.Once
	done    chan struct{}
}

func newReadAhead(r io.Reader, depth, size int) *readAhead {
	ra := &readAhead{full: make(chan []byte, depth), free: make(chan []byte, depth), stop: make(chan struct{}), done: make(chan struct{})}
	for range depth {
		ra.free <- make([]byte, size)
	}
	go func() {
		defer close(ra.done)
		defer close(ra.full)
		for {
			var buf []byte
			select {
			case buf = <-ra.free:
			case <-ra.stop:
				return
			}
			n, err := io.ReadFull(r, buf[:cap(buf)])
			if n > 0 {
				select {
				case ra.full <- buf[:n]:
				case <-ra.stop:
					return
				}
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			if err != nil {
				ra.readErr = err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	if ra.buf == nil {
		buf, ok := <-ra.full
		if !ok {
			return 0, ra.readErr // set before full was closed
		}
		ra.buf, ra.off = buf, 0
	}
	n := copy(p, ra.buf[ra.off:])
	ra.off += n
	if ra.off == len(ra.buf) {
		ra.free <- ra.buf[:cap(ra.buf)]
		ra.buf = nil
	}
	return n, nil
}

// Close stops the reader goroutine and waits for it; it may be called
// more than once.
func (ra *readAhead) Close() {
	ra.once.Do(func() { close(ra.stop) })
	<-ra.done
}
