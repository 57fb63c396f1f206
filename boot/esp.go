package boot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
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

// Device is where an ESP lies: a partition region of a disk (a
// *disk.Region) or any file.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// ESPLabel is the volume label FormatESP gives the ESP.
const ESPLabel = "EFI"

// FAT is an ESP read and written with go-diskfs on a device, without
// mounting it: the way for an image file, and for a disk whose ESP nothing
// has mounted (the pre-stage init, `stager disk init`).
type FAT struct {
	dev  Device
	fs   *fat32.FileSystem
	size int64
}

var _ FS = (*FAT)(nil)

// FormatESP writes an empty FAT32 file system of size bytes on dev.
func FormatESP(dev Device, size int64) (*FAT, error) {
	if size == 64<<20 {
		// mtools and fsck.fat reject go-diskfs's 64 MiB FAT32 (NOTES.md).
		return nil, errors.New("formatting ESP: a FAT32 of exactly 64 MiB is not readable by every tool; use another size")
	}
	f, err := fat32.Create(&storage{dev: dev, size: size}, size, 0, 512, ESPLabel, false)
	if err != nil {
		return nil, fmt.Errorf("formatting ESP: %w", err)
	}
	esp := &FAT{dev: dev, fs: f, size: size}
	if err := esp.Sync(); err != nil {
		return nil, fmt.Errorf("formatting ESP: %w", err)
	}
	return esp, nil
}

// OpenESP reads the FAT32 file system of size bytes on dev, first putting
// right what an earlier writer cut short may have left (see repairFAT); a
// clean file system is not written. On a device opened read-only the repair
// cannot write and is skipped: reading does not need it.
func OpenESP(dev Device, size int64) (*FAT, error) {
	_ = repairFAT(dev)
	f, err := fat32.Read(&storage{dev: dev, size: size}, size, 0, 512)
	if err != nil {
		return nil, fmt.Errorf("reading ESP: %w", err)
	}
	return &FAT{dev: dev, fs: f, size: size}, nil
}

func espPath(name string) string { return "/" + strings.TrimPrefix(path.Clean("/"+name), "/") }

// readDir lists the directory at p (an espPath); go-diskfs's ReadDir takes
// io/fs paths.
func (f *FAT) readDir(p string) ([]fs.DirEntry, error) {
	q := strings.TrimPrefix(p, "/")
	if q == "" {
		q = "."
	}
	return f.fs.ReadDir(q)
}

// exists tells whether name is on the ESP, walking down from the root;
// go-diskfs's errors do not say "not exist" in a way errors.Is sees.
func (f *FAT) exists(name string) (bool, error) {
	p := espPath(name)
	if p == "/" {
		return true, nil
	}
	dir := "/"
	for _, part := range strings.Split(p[1:], "/") {
		ents, err := f.readDir(dir)
		if err != nil {
			return false, fmt.Errorf("ESP: reading %s: %w", dir, err)
		}
		found := false
		for _, e := range ents {
			if strings.EqualFold(e.Name(), part) {
				found = true
				break
			}
		}
		if !found {
			return false, nil
		}
		dir = path.Join(dir, part)
	}
	return true, nil
}

func notExist(op, name string) error {
	return &fs.PathError{Op: op, Path: "ESP:" + espPath(name), Err: fs.ErrNotExist}
}

// ReadFile implements FS.
func (f *FAT) ReadFile(name string) ([]byte, error) {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("read", name)
		}
		return nil, err
	}
	b, err := f.fs.ReadFile(espPath(name))
	if err != nil {
		return nil, fmt.Errorf("ESP: reading %s: %w", espPath(name), err)
	}
	return b, nil
}

// Open implements FS.
func (f *FAT) Open(name string) (io.ReadCloser, error) {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("open", name)
		}
		return nil, err
	}
	r, err := f.fs.OpenFile(espPath(name), os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
	}
	return r, nil
}

// writeChunk bounds the memory WriteFile uses. go-diskfs writes the whole
// FAT at each allocation, so chunks are not small; with the 4 KiB clusters
// of a 300 MiB ESP, 4 MiB chunks wrote a 64 MiB slot faster than 16 MiB
// ones (BenchmarkInstallSlot: 637 against 488 MB/s) in a quarter of the
// memory.
const writeChunk = 4 << 20

// WriteFile implements FS.
func (f *FAT) WriteFile(name string, r io.Reader) error {
	p := espPath(name)
	if dir := path.Dir(p); dir != "/" {
		if err := f.fs.Mkdir(dir); err != nil {
			return fmt.Errorf("ESP: creating %s: %w", dir, err)
		}
	}
	if ok, err := f.exists(name); err != nil {
		return err
	} else if ok {
		// Free the old clusters first: opening with O_TRUNC keeps them.
		if err := f.fs.Remove(p); err != nil {
			return fmt.Errorf("ESP: replacing %s: %w", p, err)
		}
	}
	w, err := f.fs.OpenFile(p, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("ESP: creating %s: %w", p, err)
	}
	buf := make([]byte, writeChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				w.Close()
				return fmt.Errorf("ESP: writing %s: %w", p, err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			w.Close()
			return fmt.Errorf("ESP: writing %s: %w", p, rerr)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("ESP: writing %s: %w", p, err)
	}
	return nil
}

// ReadDir implements FS.
func (f *FAT) ReadDir(name string) ([]string, error) {
	p := espPath(name)
	if p != "/" {
		if ok, err := f.exists(name); err != nil || !ok {
			if err == nil {
				err = notExist("readdir", name)
			}
			return nil, err
		}
	}
	ents, err := f.readDir(p)
	if err != nil {
		return nil, fmt.Errorf("ESP: reading %s: %w", p, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// Rename implements FS.
func (f *FAT) Rename(from, to string) error {
	if path.Dir(espPath(from)) != path.Dir(espPath(to)) {
		return fmt.Errorf("ESP: renaming %s to %s: not in the same directory", espPath(from), espPath(to))
	}
	if ok, err := f.exists(from); err != nil || !ok {
		if err == nil {
			err = notExist("rename", from)
		}
		return err
	}
	if ok, err := f.exists(to); err != nil {
		return err
	} else if ok && !strings.EqualFold(espPath(from), espPath(to)) {
		if err := f.fs.Remove(espPath(to)); err != nil {
			return fmt.Errorf("ESP: renaming %s over %s: %w", espPath(from), espPath(to), err)
		}
	}
	if err := f.fs.Rename(espPath(from), espPath(to)); err != nil {
		return fmt.Errorf("ESP: renaming %s to %s: %w", espPath(from), espPath(to), err)
	}
	return nil
}

// Remove implements FS.
func (f *FAT) Remove(name string) error {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("remove", name)
		}
		return err
	}
	if err := f.fs.Remove(espPath(name)); err != nil {
		return fmt.Errorf("ESP: removing %s: %w", espPath(name), err)
	}
	return nil
}

// Sync implements FS: it repairs what go-diskfs leaves wrong (see
// repairFAT), syncs the device and reads the file system again.
func (f *FAT) Sync() error {
	if err := repairFAT(f.dev); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	fs, err := fat32.Read(&storage{dev: f.dev, size: f.size}, f.size, 0, 512)
	if err != nil {
		return fmt.Errorf("ESP: reading it again: %w", err)
	}
	f.fs = fs
	return nil
}

// storage adapts a Device to go-diskfs's backend.Storage.
type storage struct {
	dev  Device
	size int64
	off  int64
}

var _ backend.Storage = (*storage)(nil)

func (s *storage) Stat() (fs.FileInfo, error)              { return nil, backend.ErrNotSuitable }
func (s *storage) Close() error                            { return nil }
func (s *storage) Sys() (*os.File, error)                  { return nil, backend.ErrNotSuitable }
func (s *storage) Writable() (backend.WritableFile, error) { return s, nil }
func (s *storage) Path() string                            { return "" }

func (s *storage) ReadAt(p []byte, off int64) (int, error)  { return s.dev.ReadAt(p, off) }
func (s *storage) WriteAt(p []byte, off int64) (int, error) { return s.dev.WriteAt(p, off) }

func (s *storage) Read(p []byte) (int, error) {
	n, err := s.dev.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}

func (s *storage) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative offset")
	}
	s.off = offset
	return offset, nil
}
