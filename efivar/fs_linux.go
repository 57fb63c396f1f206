package efivar

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/efivarfs"
	"golang.org/x/sys/unix"
)

// FS is efivarfs, the kernel's view of the firmware's variables. Reads and
// writes go through u-root's efivarfs package; Remove is done here (see
// there).
type FS struct {
	dir string
	v   *efivarfs.EFIVarFS
}

var _ Store = (*FS)(nil)

// NewFS returns the efivarfs mounted at dir (DefaultDir when empty). It
// fails, wrapping efivarfs.ErrNoFS, when dir is not an efivarfs: u-root
// checks the file system's magic number, so FS never runs on a plain
// directory (use Dir there).
func NewFS(dir string) (*FS, error) {
	if dir == "" {
		dir = DefaultDir
	}
	v, err := efivarfs.NewPath(dir)
	if err != nil {
		return nil, fmt.Errorf("efivarfs at %s: %w (mount it with `mount -t efivarfs efivarfs %s`)", dir, err, dir)
	}
	return &FS{dir: dir, v: v}, nil
}

// Dir is where the efivarfs is mounted.
func (f *FS) Dir() string { return f.dir }

func descriptor(name, vendor string) (string, efivarfs.VariableDescriptor, error) {
	file, g, err := fileName(name, vendor)
	if err != nil {
		return "", efivarfs.VariableDescriptor{}, err
	}
	return file, efivarfs.VariableDescriptor{Name: name, GUID: g}, nil
}

// List implements Lister, reading the directory: efivarfs shows each
// variable as a file NAME-vendor.
func (f *FS) List(vendor string) ([]string, error) { return listDir(f.dir, vendor) }

// Get implements Store.
func (f *FS) Get(name, vendor string) (uint32, []byte, error) {
	file, desc, err := descriptor(name, vendor)
	if err != nil {
		return 0, nil, err
	}
	attrs, data, err := f.v.Get(desc)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, notExist("get", file)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("reading EFI variable %s: %w", file, err)
	}
	return uint32(attrs), data, nil
}

// Set implements Store. u-root clears the immutable flag that efivarfs sets
// on most variables before writing, and sets it again after.
func (f *FS) Set(name, vendor string, attrs uint32, data []byte) error {
	file, desc, err := descriptor(name, vendor)
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return f.Remove(name, vendor)
	}
	if err := f.v.Set(desc, efivarfs.VariableAttributes(attrs), data); err != nil {
		return fmt.Errorf("setting EFI variable %s: %w", file, err)
	}
	return nil
}

// Remove implements Store. efivarfs marks every variable it does not know to
// be safe to delete immutable (all of systemd-boot's), and an immutable
// file cannot be opened for writing: u-root's RemoveVariable opens it
// O_WRONLY to clear the flag and so fails with EPERM. Here the flag is
// cleared through a read-only descriptor, then the file is unlinked (the
// kernel deletes the variable).
func (f *FS) Remove(name, vendor string) error {
	file, _, err := descriptor(name, vendor)
	if err != nil {
		return err
	}
	if err := removeImmutable(filepath.Join(f.dir, file)); err != nil {
		return fmt.Errorf("removing EFI variable %s: %w", file, err)
	}
	return nil
}

// removeImmutable clears the immutable flag of the file at p, if set, and
// removes the file; nil when there is none.
func removeImmutable(p string) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	err = clearImmutable(fd)
	unix.Close(fd)
	if err != nil {
		return &fs.PathError{Op: "ioctl", Path: p, Err: err}
	}
	err = os.Remove(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// fsImmutableFL is FS_IMMUTABLE_FL of <linux/fs.h>, the inode flag chattr +i
// sets.
const fsImmutableFL = 0x10

// clearImmutable clears FS_IMMUTABLE_FL on fd.
func clearImmutable(fd int) error {
	flags, err := ioctlRetry(func() (int, error) { return unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS) })
	if err != nil {
		return os.NewSyscallError("ioctl(FS_IOC_GETFLAGS)", err)
	}
	if flags&fsImmutableFL == 0 {
		return nil
	}
	_, err = ioctlRetry(func() (int, error) {
		return 0, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags&^fsImmutableFL)
	})
	if err != nil {
		return os.NewSyscallError("ioctl(FS_IOC_SETFLAGS)", err)
	}
	return nil
}

func ioctlRetry(f func() (int, error)) (int, error) {
	for {
		v, err := f()
		if err != unix.EINTR {
			return v, err
		}
	}
}
