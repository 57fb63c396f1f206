package boot

import (
	"io"

	"github.com/stagehand-dev/stagehand/fat"
)

// FS is an ESP's file system as the backends use it. Names are
// slash-separated paths from the ESP's root, without a leading slash.
type FS interface {
	// ReadFile returns a file's contents; fs.ErrNotExist when it is absent.
	ReadFile(name string) ([]byte, error)
	// Open opens a file for reading; fs.ErrNotExist when it is absent.
	Open(name string) (io.ReadCloser, error)
	// WriteFile creates or replaces a file, creating its directories.
	WriteFile(name string, r io.Reader) error
	// ReadDir lists a directory's names, sorted; fs.ErrNotExist when it is
	// absent.
	ReadDir(name string) ([]string, error)
	// Rename renames a file within its directory, replacing the target.
	Rename(from, to string) error
	// Remove removes a file; fs.ErrNotExist when it is absent.
	Remove(name string) error
	// Sync makes every change so far durable.
	Sync() error
}

// An ESP that is not mounted is an FS as a fat.Volume.
var _ FS = (*fat.Volume)(nil)

// ESPLabel is the volume label bootdisk.Init gives the ESP.
const ESPLabel = "EFI"
