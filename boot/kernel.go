package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNotKernel marks a file that is not an x86 Linux kernel (bzImage).
var ErrNotKernel = errors.New("not a Linux kernel image (bzImage)")

// KernelRelease reads the release (what `uname -r` prints, e.g.
// "6.1.0-56-cloud-amd64") from the setup header of an x86 bzImage, where it
// lies uncompressed.
func KernelRelease(r io.ReaderAt) (string, error) {
	hdr := make([]byte, 0x210)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return "", fmt.Errorf("%w: %v", ErrNotKernel, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(hdr[0x1fe:]) != 0xaa55 {
		return "", ErrNotKernel
	}
	ptr := binary.LittleEndian.Uint16(hdr[0x20e:])
	if ptr == 0 {
		return "", fmt.Errorf("%w: no kernel version in the setup header", ErrNotKernel)
	}
	buf := make([]byte, 256)
	n, err := r.ReadAt(buf, int64(ptr)+0x200)
	if n == 0 {
		return "", fmt.Errorf("%w: reading the kernel version: %v", ErrNotKernel, err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	rel, _, _ := strings.Cut(string(buf), " ")
	if rel == "" {
		return "", fmt.Errorf("%w: empty kernel version", ErrNotKernel)
	}
	return rel, nil
}
