package grubenv

import (
	"bytes"
	"fmt"
	"os"
)

// UpdateFile changes the grubenv file at path in place: it reads and parses
// the block, lets fn change it, and writes the new block over the old one at
// offset 0 with one pwrite, then fsyncs. The file is never truncated or
// re-created, so it keeps the disk blocks GRUB's save_env writes through.
// A file that is not Size bytes or not a valid block, an error from fn, or a
// block that does not fit leaves the file untouched; so does a change that
// gives the same bytes (nothing is written).
func UpdateFile(path string, fn func(*Env) error) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("updating %s: %w", path, invalid(-1, "not a regular file (%v)", fi.Mode()))
	}
	if fi.Size() != Size {
		return fmt.Errorf("updating %s: %w", path, invalid(-1, "file is %d bytes, want %d", fi.Size(), Size))
	}
	old := make([]byte, Size)
	if _, err := f.ReadAt(old, 0); err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	b, err := Update(old, fn)
	if err != nil {
		return fmt.Errorf("updating %s: %w", path, err)
	}
	if b == nil {
		return nil
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("grubenv: %w", err)
	}
	return f.Close()
}

// Update is UpdateFile without the file: it parses the block old, lets fn
// change it, and returns the block to write over old, in place, at offset
// 0; nil when there is nothing to write (the same bytes). A block that is
// not valid, an error from fn, or a block that does not fit is an error.
// Whoever writes the result must write it over the old bytes where they lie
// (see the package documentation), as UpdateFile does.
func Update(old []byte, fn func(*Env) error) ([]byte, error) {
	env, err := Parse(old)
	if err != nil {
		return nil, err
	}
	if err := fn(env); err != nil {
		return nil, err
	}
	b, err := env.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if bytes.Equal(b, old) {
		return nil, nil
	}
	return b, nil
}
