package systemdboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

var _ boot.CountedDefault = (*Loader)(nil)

// CountedDefaultPattern is loader.conf's default while a trial is armed
// without boot-once: it matches both slots' entries, and systemd-boot
// boots the first it matches in its menu's order, in which an entry with
// no tries left comes last (config_entry_compare, config_entry_find). It
// is as long as EntryPattern's, so that loader.conf keeps its size from
// one to the other: its rewrite is one sector's, with no directory entry
// to change, which a power cut cannot tear.
const CountedDefaultPattern = "stagehand-?[.+]*"

// How stagehand orders its Type #1 entries in systemd-boot's menu: each
// entry it installs carries a sort-key that sorts before the other slot's
// ("stagehand-999999999", then one less at each install), so the slot
// installed last is listed first, whatever the slots' names and versions.
const (
	sortKeyPrefix = "stagehand-"
	sortKeyFirst  = 999_999_999
)

// nextSortKey is the sort-key of an entry installed beside other (the
// other slot's entry, "" when it has none or none of ours).
func nextSortKey(other string) string {
	n, err := strconv.ParseUint(strings.TrimPrefix(other, sortKeyPrefix), 10, 32)
	if !strings.HasPrefix(other, sortKeyPrefix) || err != nil || n == 0 || n > sortKeyFirst {
		n = sortKeyFirst + 1
	}
	return fmt.Sprintf("%s%09d", sortKeyPrefix, n-1)
}

// sortKey returns the sort-key field of a Type #1 entry, "" when none.
func (e *Entry) sortKey() string {
	for _, f := range e.Extra {
		if f.Key == "sort-key" {
			return f.Value
		}
	}
	return ""
}

// menuOrder tells which of two slots' entries systemd-boot lists first, as
// its config_entry_compare orders Type #1 entries: those with no tries
// left last; an entry with a sort-key before one without; sort-keys in
// byte order; else IDs in reverse ("stagehand-b" before "stagehand-a"). A
// UKI's sort-key comes from its os-release, which stagehand does not set,
// and equal sort-keys are ordered by version: both are an error here.
func menuOrder(x, y boot.SlotEntry) (first boot.SlotEntry, err error) {
	if x.UKI || y.UKI {
		return boot.SlotEntry{}, fmt.Errorf("slot %s or %s is a unified kernel image, whose place in systemd-boot's menu its os-release decides", x.Slot, y.Slot)
	}
	bad := func(e boot.SlotEntry) bool { return e.Counting && e.Left == 0 }
	switch {
	case bad(x) != bad(y):
		if bad(x) {
			return y, nil
		}
		return x, nil
	case (x.SortKey == "") != (y.SortKey == ""):
		if x.SortKey == "" {
			return y, nil
		}
		return x, nil
	case x.SortKey != "" && x.SortKey == y.SortKey:
		return boot.SlotEntry{}, fmt.Errorf("slots %s and %s have the same sort-key %q, so their versions order them", x.Slot, y.Slot, x.SortKey)
	case x.SortKey != "":
		if x.SortKey < y.SortKey {
			return x, nil
		}
		return y, nil
	}
	if x.Slot > y.Slot {
		return x, nil
	}
	return y, nil
}

// SetCountedDefault implements boot.CountedDefault: loader.conf's default
// becomes CountedDefaultPattern, after checking that systemd-boot lists
// slot's counted entry, tries left, before the other slot's.
func (s *Loader) SetCountedDefault(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	x, _, err := s.slotEntry(slot)
	if err != nil {
		return fmt.Errorf("making slot %s the counted default: %w", slot, err)
	}
	if !x.Counting || x.Left == 0 {
		return fmt.Errorf("making slot %s the counted default: its entry %s does not count tries, or has none left", slot, x.Description)
	}
	if y, _, err := s.slotEntry(slot.Other()); err == nil {
		first, err := menuOrder(x, y)
		if err != nil {
			return fmt.Errorf("making slot %s the counted default: %w", slot, err)
		}
		if first.Slot != slot {
			return fmt.Errorf("making slot %s the counted default: systemd-boot lists slot %s's entry first", slot, first.Slot)
		}
	} else if !errors.Is(err, boot.ErrSlotEmpty) {
		return fmt.Errorf("making slot %s the counted default: %w", slot, err)
	}
	def := CountedDefaultPattern
	if err := s.writeLoaderConf(&def); err != nil {
		return err
	}
	if s.vars == nil {
		return nil
	}
	// A LoaderEntryDefault would win over loader.conf; on such firmware
	// it cannot be removed either.
	switch _, _, err := s.vars.Get(DefaultVar, efivar.LoaderVendor); {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("reading %s: %w", DefaultVar, err)
	}
	if err := s.vars.Remove(DefaultVar, efivar.LoaderVendor); err != nil {
		return fmt.Errorf("making slot %s the counted default: removing %s, which systemd-boot prefers to loader.conf: %w", slot, DefaultVar, err)
	}
	return nil
}

// CountedDefault implements boot.CountedDefault.
func (s *Loader) CountedDefault(ctx context.Context) (bool, error) {
	def, err := s.confDefault()
	return def == CountedDefaultPattern, err
}

// confDefault is loader.conf's default, "" when it names none.
func (s *Loader) confDefault() (string, error) {
	conf, err := s.loaderConfig()
	if err != nil {
		return "", err
	}
	def := ""
	for _, f := range conf {
		if f.Key == "default" {
			def = f.Value
		}
	}
	return def, nil
}

// countedDefaultSlot is the slot systemd-boot boots by
// CountedDefaultPattern.
func (s *Loader) countedDefaultSlot() (meta.Slot, error) {
	var found []boot.SlotEntry
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		e, _, err := s.slotEntry(slot)
		switch {
		case errors.Is(err, boot.ErrSlotEmpty):
			continue
		case err != nil:
			return "", err
		}
		found = append(found, e)
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%q matches no stagehand slot's entry", CountedDefaultPattern)
	case 1:
		return found[0].Slot, nil
	}
	first, err := menuOrder(found[0], found[1])
	if err != nil {
		return "", fmt.Errorf("%q: %w", CountedDefaultPattern, err)
	}
	return first.Slot, nil
}
