package systemdboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
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

// DefaultVar is the default entry set in the firmware's variables (by
// bootctl set-default, or the 'd' key in the menu): systemd-boot prefers
// it to loader.conf's default.
const DefaultVar = "LoaderEntryDefault"

var _ boot.BootRecord = (*Loader)(nil)

// BootedPlain implements boot.BootRecord: LoaderEntrySelected names slot's
// entry file (.conf or .efi) without a counter, and LoaderBootCountPath is absent (a
// counted entry sets it in every systemd-boot that counts, whatever ID it
// reports).
func (s *Loader) BootedPlain(ctx context.Context, slot meta.Slot) (bool, error) {
	if err := checkSlot(slot); err != nil {
		return false, err
	}
	if s.vars == nil {
		return false, boot.ErrNoEFIVars
	}
	sel, err := efivar.GetString(s.vars, SelectedVar, efivar.LoaderVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", SelectedVar, err)
	}
	plain := EntryName{ID: EntryID(slot)}
	if !strings.EqualFold(sel, plain.String()) && !strings.EqualFold(sel, EntryName{ID: plain.ID, UKI: true}.String()) {
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

// BootedSlot is the slot whose entry systemd-boot says it booted
// (LoaderEntrySelected: the entry's file name, with or without its counter,
// of either kind); false when it names none of stagehand's. It is how a
// slot booted from a UKI is known: the UKI's command line serves either
// slot and carries no stagehand.slot=. A kernel started by kexec inherits
// the variable of the firmware boot before it, so stagehand.slot= on the
// command line (prestage passes it to every kexec) comes first.
func (s *Loader) BootedSlot(ctx context.Context) (meta.Slot, bool, error) {
	if s.vars == nil {
		return "", false, boot.ErrNoEFIVars
	}
	sel, err := efivar.GetString(s.vars, SelectedVar, efivar.LoaderVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading %s: %w", SelectedVar, err)
	}
	sel = strings.ToLower(sel)
	n, err := ParseUKIName(sel)
	if err != nil {
		n, err = ParseEntryName(sel)
	}
	if err != nil {
		return "", false, nil
	}
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		if n.ID == EntryID(slot) {
			return slot, true, nil
		}
	}
	return "", false, nil
}
