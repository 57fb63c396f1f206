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

// Overwriter is an FS that can write over part of a file where it lies:
// what a file must allow when another program writes it through the disk
// blocks it found it in, as GRUB's save_env writes grubenv.
type Overwriter interface {
	// OverwriteFile writes p over the bytes of the existing file name from
	// offset off, without changing its size, its clusters or blocks, or
	// its directory entry, then makes the write durable. It refuses a
	// write past the file's end, and creates nothing: fs.ErrNotExist when
	// the file is absent. A disk writes each sector whole or not at all,
	// so a cut leaves every sector p covers old or new.
	OverwriteFile(name string, off int64, p []byte) error
}

// An ESP that is not mounted is an FS as a fat.Volume.
var (
	_ FS         = (*fat.Volume)(nil)
	_ Overwriter = (*fat.Volume)(nil)
)

// ESPLabel is the volume label bootdisk.Init gives the ESP.
const ESPLabel = "EFI"
