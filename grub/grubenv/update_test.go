package grubenv

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

// TestUpdate: the pure part of UpdateFile, which the GRUB backend writes
// through its own file system: the new block, nil when nothing changes,
// and old left as it was.
func TestUpdate(t *testing.T) {
	errFn := errors.New("fn failed")
	old := block(debianWarning + "saved_entry=0\n")
	keep := bytes.Clone(old)
	for _, tc := range []struct {
		name    string
		old     []byte
		fn      func(*Env) error
		want    []byte // nil: nothing to write
		wantErr error
	}{
		{"set", old, func(e *Env) error { return e.Set("saved_entry", "1") }, block(debianWarning + "saved_entry=1\n"), nil},
		{"same value", old, func(e *Env) error { return e.Set("saved_entry", "0") }, nil, nil},
		{"nothing", old, func(*Env) error { return nil }, nil, nil},
		{"fn fails", old, func(*Env) error { return errFn }, nil, errFn},
		{"does not fit", old, func(e *Env) error { return e.Set("a", strings.Repeat("x", Size)) }, nil, ErrTooSmall},
		{"invalid", old[:Size-1], func(*Env) error { return nil }, nil, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Update(tc.old, tc.fn)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Update = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
				t.Errorf("Update = %q, want %q", got, tc.want)
			}
			if !bytes.Equal(old, keep) {
				t.Error("Update changed the old block")
			}
		})
	}
	// UpdateFile writes what Update returns.
	path := writeBlock(t, old)
	set := func(e *Env) error { return e.SetFirst("stagehand_tries", "3") }
	want, err := Update(old, set)
	if err != nil {
		t.Fatal(err)
	}
	if err := UpdateFile(path, set); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Errorf("UpdateFile wrote %q, Update returns %q", got, want)
	}
}
