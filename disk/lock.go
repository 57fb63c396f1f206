package disk

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by Lock when another process holds the disk.
var ErrLocked = errors.New("disk is locked by another stagehand process")

// Lock takes an flock on the disk (exclusive for writers, shared for
// readers) and waits for it until ctx is done. The lock is released by
// Unlock or Close; it lives as long as the disk's open file.
func (d *Disk) Lock(ctx context.Context, exclusive bool) error {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	start := time.Now()
	for {
		err := unix.Flock(int(d.f.Fd()), how|unix.LOCK_NB)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EWOULDBLOCK:
		default:
			return fmt.Errorf("locking %s: %w", d.path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (waited %s); retry when it has finished", d.path, ErrLocked, time.Since(start).Round(time.Millisecond))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Unlock releases the lock taken by Lock.
func (d *Disk) Unlock() error {
	for {
		if err := unix.Flock(int(d.f.Fd()), unix.LOCK_UN); err != unix.EINTR {
			return err
		}
	}
}
