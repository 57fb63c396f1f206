package disk

import (
	"fmt"
	"path/filepath"
	"sync"
)

// Recorder sees every change made through this package to one image file,
// in the order the changes complete: what crash-state tests replay. Its
// methods are called after the change returned, with absolute byte
// offsets on the image; p is only valid during the call.
type Recorder interface {
	Wrote(off int64, p []byte) // a write completed (not yet durable)
	Zeroed(off, n int64)       // a range was made to read as zeros
	Flushed()                  // a sync returned: every change before it is durable
}

var recorders struct {
	sync.Mutex
	m map[string]Recorder
}

// Record sends the changes to the image file at path, made by every Disk
// opened on it from now on, to r, until stop is called.
func Record(path string, r Recorder) (stop func(), err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("recording %s: %w", path, err)
	}
	recorders.Lock()
	defer recorders.Unlock()
	if recorders.m == nil {
		recorders.m = map[string]Recorder{}
	}
	if _, ok := recorders.m[abs]; ok {
		return nil, fmt.Errorf("recording %s: already recorded", path)
	}
	recorders.m[abs] = r
	return func() {
		recorders.Lock()
		delete(recorders.m, abs)
		recorders.Unlock()
	}, nil
}

// recorderFor is the recorder of the image at path, nil when none.
func recorderFor(path string) Recorder {
	recorders.Lock()
	defer recorders.Unlock()
	if len(recorders.m) == 0 {
		return nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil
	}
	return recorders.m[abs]
}
