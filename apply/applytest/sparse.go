package applytest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// CopySparse copies [off, off+n) of src to dst at offset 0, reading only
// the extents src holds data in (SEEK_DATA, SEEK_HOLE): a disk image of
// hundreds of MiB with a few MiB written copies in milliseconds, and the
// holes stay holes in dst when dst is a fresh file of size n.
func CopySparse(dst io.WriterAt, src *os.File, off, n int64) error {
	fd := int(src.Fd())
	buf := make([]byte, 1<<20)
	end := off + n
	for pos := off; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("copying %s: %w", src.Name(), os.NewSyscallError("lseek(SEEK_DATA)", err))
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copying %s: %w", src.Name(), os.NewSyscallError("lseek(SEEK_HOLE)", err))
		}
		hole = min(hole, end)
		for p := data; p < hole; {
			c := min(int64(len(buf)), hole-p)
			if _, err := src.ReadAt(buf[:c], p); err != nil {
				return fmt.Errorf("copying %s: %w", src.Name(), err)
			}
			if _, err := dst.WriteAt(buf[:c], p-off); err != nil {
				return fmt.Errorf("copying %s: %w", src.Name(), err)
			}
			p += c
		}
		pos = hole
	}
	return nil
}

// CopyImage copies the image file src to a new file dst of its size with
// CopySparse: the holes stay holes.
func CopyImage(t testing.TB, src, dst string) {
	t.Helper()
	s, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := s.Stat()
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Truncate(fi.Size()); err != nil {
		t.Fatal(err)
	}
	if err := CopySparse(d, s, 0, fi.Size()); err != nil {
		t.Fatal(err)
	}
}
