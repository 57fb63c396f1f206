package boot

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// Dir is an ESP mounted at a directory of the host (/boot/efi, /efi), or a
// directory standing for one in tests.
type Dir string

var (
	_ FS         = Dir("")
	_ Overwriter = Dir("")
)

func (d Dir) path(name string) string {
	return filepath.Join(string(d), filepath.FromSlash(path.Clean("/"+name)))
}

// ReadFile implements FS.
func (d Dir) ReadFile(name string) ([]byte, error) { return os.ReadFile(d.path(name)) }

// Open implements FS.
func (d Dir) Open(name string) (io.ReadCloser, error) { return os.Open(d.path(name)) }

// WriteFile implements FS: it writes a temporary file, syncs it and renames
// it into place.
func (d Dir) WriteFile(name string, r io.Reader) error {
	p := d.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".stagehand-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return os.Rename(tmp.Name(), p)
}

// OverwriteFile implements Overwriter: it opens the file read-write,
// without creating or truncating it, writes p at off with one pwrite and
// fsyncs. The file keeps its inode and its blocks on file systems that
// write data in place (FAT, ext2/3/4 without data journalling); on
// copy-on-write ones (btrfs, ZFS) no program keeps a file's blocks.
func (d Dir) OverwriteFile(name string, off int64, p []byte) error {
	f, err := os.OpenFile(d.path(name), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("overwriting %s: not a regular file (%v)", f.Name(), fi.Mode())
	}
	if off < 0 || off+int64(len(p)) > fi.Size() {
		return fmt.Errorf("overwriting %s: %d bytes at %d do not lie within its %d bytes", f.Name(), len(p), off, fi.Size())
	}
	if _, err := f.WriteAt(p, off); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// ReadDir implements FS.
func (d Dir) ReadDir(name string) ([]string, error) {
	ents, err := os.ReadDir(d.path(name))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// Rename implements FS.
func (d Dir) Rename(from, to string) error { return os.Rename(d.path(from), d.path(to)) }

// Remove implements FS.
func (d Dir) Remove(name string) error { return os.Remove(d.path(name)) }

// Sync implements FS: it syncs the file system holding the directory.
func (d Dir) Sync() error {
	f, err := os.Open(string(d))
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		err := unix.Syncfs(int(f.Fd()))
		if err != unix.EINTR {
			return os.NewSyscallError("syncfs", err)
		}
	}
}
