package disk

import (
	"context"
	"time"

	"github.com/stagehand-dev/stagehand/meta"
)

// LockTimeout is how long OpenMETA waits for another stagehand process.
var LockTimeout = 10 * time.Second

// OpenMETA opens the disk at path, locks it (exclusive when writable, shared
// otherwise, waiting until ctx is done), finds its META partition and loads
// the store. Closing the returned disk releases the lock.
func OpenMETA(ctx context.Context, path string, writable bool) (*meta.Store, *Disk, error) {
	d, err := Open(path, writable)
	if err != nil {
		return nil, nil, err
	}
	r, err := d.META()
	if err == nil {
		lctx, cancel := context.WithTimeout(ctx, LockTimeout)
		err = d.Lock(lctx, writable)
		cancel()
	}
	var s *meta.Store
	if err == nil {
		s, err = meta.Load(r, r.Name())
	}
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return s, d, nil
}
