package applytest

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/efivar"
)

// NoRuntimeWrites is firmware that refuses variable writes at run time, as
// efivarfs reports it (a Raspberry Pi's missing SetVariableRT, or
// stagehand.efivars=ro: EROFS), for the variables the OS writes; the
// loader's own (LoaderEntrySelected, set at boot) still appear.
type NoRuntimeWrites struct{ efivar.Store }

// Set implements efivar.Store: refused.
func (n NoRuntimeWrites) Set(name, vendor string, attrs uint32, data []byte) error {
	return &fs.PathError{Op: "write", Path: name + "-" + vendor, Err: unix.EROFS}
}

// Remove implements efivar.Store: refused, unless there is nothing to
// remove (efivarfs then says so before it tries).
func (n NoRuntimeWrites) Remove(name, vendor string) error {
	if _, _, err := n.Get(name, vendor); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return &fs.PathError{Op: "remove", Path: name + "-" + vendor, Err: unix.EROFS}
}
