package disk

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirectAlign is the alignment of offsets, lengths and buffers for
// DirectWriter.
const DirectAlign = 4096

// DirectWriter writes to a region bypassing the page cache (O_DIRECT): large
// sequential writes then cost no copy and leave nothing for a sync to flush
// but the device's own cache.
type DirectWriter struct {
	f *os.File
	r *Region
}

// OpenDirect opens the region's disk again with O_DIRECT. It fails where the
// filesystem cannot do direct I/O (tmpfs); callers fall back to WriteAt.
func (r *Region) OpenDirect() (*DirectWriter, error) {
	f, err := os.OpenFile(r.d.path, os.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s for direct I/O: %w", r.d.path, err)
	}
	return &DirectWriter{f: f, r: r}, nil
}

// WriteAt writes p at off in the region; both, and len(p), must be multiples
// of DirectAlign and p must start on such a boundary (see AlignedBuffer).
func (w *DirectWriter) WriteAt(p []byte, off int64) (int, error) {
	if off%DirectAlign != 0 || len(p)%DirectAlign != 0 || (len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))%DirectAlign != 0) {
		return 0, fmt.Errorf("direct write of %d bytes at %d is not %d-byte aligned", len(p), off, DirectAlign)
	}
	if off < 0 || off+int64(len(p)) > w.r.Size {
		return 0, fmt.Errorf("write of %d bytes at offset %d is outside %s (%d bytes)", len(p), off, w.r.Name(), w.r.Size)
	}
	n, err := w.f.WriteAt(p, w.r.Offset+off)
	if w.r.d.rec != nil && n > 0 {
		w.r.d.rec.Wrote(w.r.Offset+off, p[:n])
	}
	return n, err
}

// Close closes the direct file.
func (w *DirectWriter) Close() error { return w.f.Close() }

// AlignedBuffer returns a zeroed buffer of n bytes starting on a
// DirectAlign boundary.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := (DirectAlign - int(uintptr(unsafe.Pointer(&b[0]))%DirectAlign)) % DirectAlign
	return b[skip : skip+n : skip+n]
}
