package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

// What systemd-boot says about the boot it just made, in volatile EFI
// variables: the ID of the entry it booted (its file name, lower case;
// later versions leave the counter out), and, when that entry counts tries,
// the entry file's path (for systemd-bless-boot).
const (
	SelectedVar  = "LoaderEntrySelected"
	CountPathVar = "LoaderBootCountPath"
)

// BootRecord is a backend that can tell, from what the bootloader recorded
// about this boot alone, without reading the ESP, that the running slot
// booted from its plain entry.
type BootRecord interface {
	// BootedPlain reports whether this boot came from slot's entry with no
	// boot counter. False when the bootloader says nothing, or something
	// else: the caller then looks at the ESP.
	BootedPlain(ctx context.Context, slot meta.Slot) (bool, error)
}

var _ BootRecord = (*SystemdBoot)(nil)

// BootedPlain implements BootRecord: LoaderEntrySelected names slot's
// entry file without a counter, and LoaderBootCountPath is absent (a
// counted entry sets it in every systemd-boot that counts, whatever ID it
// reports).
func (s *SystemdBoot) BootedPlain(ctx context.Context, slot meta.Slot) (bool, error) {
	if err := checkSlot(slot); err != nil {
		return false, err
	}
	if s.vars == nil {
		return false, ErrNoEFIVars
	}
	sel, err := efivar.GetString(s.vars, SelectedVar, efivar.LoaderVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", SelectedVar, err)
	}
	if !strings.EqualFold(sel, EntryName{ID: EntryID(slot)}.String()) {
		return false, nil
	}
	switch _, _, err := s.vars.Get(CountPathVar, efivar.LoaderVendor); {
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("reading %s: %w", CountPathVar, err)
	}
	return false, nil
}
