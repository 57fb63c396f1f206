package disk

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Region is one partition of an open disk: reads and writes are bounded to
// it and Sync flushes the disk. It implements meta.Device.
type Region struct {
	Partition
	d *Disk
}

// Name says which disk and partition this is, for messages.
func (r *Region) Name() string {
	return fmt.Sprintf("%s partition %d (%s)", r.d.path, r.Index, r.Label)
}

// ReadAt reads within the region; reading past its end returns io.EOF.
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= r.Size {
		return 0, io.EOF
	}
	short := false
	if int64(len(p)) > r.Size-off {
		p, short = p[:r.Size-off], true
	}
	n, err := r.d.f.ReadAt(p, r.Offset+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// WriteAt writes within the region; a write that would cross its end writes
// nothing and fails.
func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > r.Size {
		return 0, fmt.Errorf("write of %d bytes at offset %d is outside %s (%d bytes)", len(p), off, r.Name(), r.Size)
	}
	return r.d.f.WriteAt(p, r.Offset+off)
}

// Sync makes every write so far durable on the disk.
func (r *Region) Sync() error { return r.d.Sync() }

// Sync makes every write so far durable on the disk.
func (d *Disk) Sync() error {
	for {
		err := unix.Fdatasync(int(d.f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return os.NewSyscallError("fdatasync", err)
			}
			return nil
		}
	}
}
