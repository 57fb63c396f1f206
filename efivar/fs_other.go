//go:build !linux

package efivar

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// FS is efivarfs, which only Linux has.
type FS struct{}

var _ Store = (*FS)(nil)

// NewFS fails: efivarfs is Linux's.
func NewFS(dir string) (*FS, error) {
	return nil, fmt.Errorf("efivarfs: %w", unix.ENOSYS)
}

// Dir is where the efivarfs is mounted.
func (f *FS) Dir() string { return "" }

// Get implements Store.
func (f *FS) Get(name, vendor string) (uint32, []byte, error) { return 0, nil, unix.ENOSYS }

// Set implements Store.
func (f *FS) Set(name, vendor string, attrs uint32, data []byte) error { return unix.ENOSYS }

// List implements Lister.
func (f *FS) List(vendor string) ([]string, error) { return nil, unix.ENOSYS }

// Remove implements Store.
func (f *FS) Remove(name, vendor string) error { return unix.ENOSYS }
