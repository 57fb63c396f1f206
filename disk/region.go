package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"unsafe"

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
	if r.Index == 0 {
		return r.d.path + " (whole disk)"
	}
	return fmt.Sprintf("%s partition %d (%s)", r.d.path, r.Index, r.Label)
}

// Whole returns the whole disk as a region (Index 0, no label): for what
// lies outside every partition, such as the boot code of the protective
// MBR (grub/install.BIOS).
func (d *Disk) Whole() *Region {
	return &Region{Partition: Partition{Size: d.size}, d: d}
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
	n, err := r.d.f.WriteAt(p, r.Offset+off)
	if r.d.rec != nil && n > 0 {
		r.d.rec.Wrote(r.Offset+off, p[:n])
	}
	return n, err
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
			if d.rec != nil {
				d.rec.Flushed()
			}
			return nil
		}
	}
}

// Zero makes [off, off+n) of the region read as zeros: a punched hole in an
// image file, BLKZEROOUT on a block device (whose unaligned head and tail,
// which BLKZEROOUT refuses with EINVAL, are written). It does not sync.
func (r *Region) Zero(off, n int64) error {
	if off < 0 || n < 0 || off+n > r.Size {
		return fmt.Errorf("zeroing %d bytes at offset %d is outside %s (%d bytes)", n, off, r.Name(), r.Size)
	}
	if r.d.block && n > 0 {
		ss := int64(r.d.sectorSize)
		from := (r.Offset+off+ss-1)/ss*ss - r.Offset
		to := (r.Offset+off+n)/ss*ss - r.Offset
		if to <= from {
			return r.writeZeros(off, n)
		}
		if err := r.writeZeros(off, from-off); err != nil {
			return err
		}
		if err := r.writeZeros(to, off+n-to); err != nil {
			return err
		}
		off, n = from, to-from
	}
	if n == 0 {
		return nil
	}
	fd := int(r.d.f.Fd())
	start := r.Offset + off
	for {
		var err error
		if r.d.block {
			rng := [2]uint64{uint64(start), uint64(n)}
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng)))
			runtime.KeepAlive(&rng)
			if errno != 0 {
				err = os.NewSyscallError("ioctl(BLKZEROOUT)", errno)
			}
		} else {
			err = unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, start, n)
			if err != nil {
				err = os.NewSyscallError("fallocate(ZERO_RANGE)", err)
			}
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
			return r.writeZeros(off, n)
		}
		if err != nil {
			return fmt.Errorf("zeroing %s: %w", r.Name(), err)
		}
		if r.d.rec != nil {
			r.d.rec.Zeroed(start, n)
		}
		return nil
	}
}

// writeZeros is Zero for filesystems and devices that cannot do it at once.
func (r *Region) writeZeros(off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(z)))
		if _, err := r.WriteAt(z[:c], off); err != nil {
			return fmt.Errorf("zeroing %s: %w", r.Name(), err)
		}
		off, n = off+c, n-c
	}
	return nil
}

// StartWriteback asks the kernel to start writing [off, off+n) of the region
// to the disk without waiting, so that a later Sync has less left to do.
func (r *Region) StartWriteback(off, n int64) {
	unix.SyncFileRange(int(r.d.f.Fd()), r.Offset+off, n, unix.SYNC_FILE_RANGE_WRITE)
}
