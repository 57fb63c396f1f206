package systemdboot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

// Where Debian's systemd-boot-efi puts the loader.
const EFIBinary = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// The systemd-boot files on the ESP.
const (
	fallbackEFI = "EFI/BOOT/BOOTX64.EFI"
	systemdEFI  = "EFI/systemd/systemd-bootx64.efi"
	loaderConf  = "loader/loader.conf"
	entriesDir  = "loader/entries"
	ukiDir      = "EFI/Linux" // Type #2 entries: unified kernel images
	slotsDir    = "stagehand"
)

// Loader is the systemd-boot backend: each slot is a Type #1 entry,
// loader/entries/stagehand-a.conf (stagehand-a+3.conf while its tries are
// counted), loading stagehand/a/vmlinuz and stagehand/a/initramfs, or a
// Type #2 entry, the unified kernel image EFI/Linux/stagehand-a.efi
// (stagehand-a+3.efi); loader.conf names the default entry, the
// LoaderEntryOneShot EFI variable the entry to boot once. A slot has one
// entry of either kind: installing one kind removes the other.
//
// How systemd-boot names entries: it gives each Type #1 entry an ID, and
// matches loader.conf's default, LoaderEntryDefault and LoaderEntryOneShot
// against these IDs as glob patterns (efi_fnmatch, after lowering the
// case). Debian 12's systemd-boot 252 takes the whole file name as the ID,
// boot counter included ("stagehand-b+1-1.conf"); from systemd 255 or so the
// counter is cut out of the ID ("stagehand-b.conf"). A name without ".conf"
// ("stagehand-b") matches no entry in either. So the backend never writes
// a file name but EntryPattern, "stagehand-b[.+]*", which matches slot b's
// entry in every counter state under both rules, and nothing else of ours.
type Loader struct {
	esp    boot.FS
	loader string
	vars   efivar.Store
	part   *ESPPartition // for boot.FirmwareFallback
}

var (
	_ boot.Backend    = (*Loader)(nil)
	_ boot.BootOnce   = (*Loader)(nil)
	_ boot.Blesser    = (*Loader)(nil)
	_ boot.SlotReader = (*Loader)(nil)
)

// Option changes a Loader.
type Option func(*Loader)

// WithLoaderEFI installs the systemd-boot EFI binary at path instead of
// EFIBinary.
func WithLoaderEFI(path string) Option { return func(s *Loader) { s.loader = path } }

// WithEFIVars gives the backend the firmware's variables, where boot once
// (LoaderEntryOneShot) is set. Without them the BootOnce methods fail with
// boot.ErrNoEFIVars.
func WithEFIVars(vars efivar.Store) Option {
	return func(s *Loader) { s.vars = vars }
}

// New returns the backend for the ESP esp.
func New(esp boot.FS, opts ...Option) *Loader {
	s := &Loader{esp: esp, loader: EFIBinary}
	for _, o := range opts {
		o(s)
	}
	return s
}

// EntryID is the ID of slot's entry ("stagehand-a"): its file name without
// the boot counter and .conf.
func EntryID(slot meta.Slot) string { return "stagehand-" + string(slot) }

// EntryPattern is the glob that loader.conf's default and
// LoaderEntryOneShot hold to name slot's entry ("stagehand-a[.+]*"): it
// matches systemd-boot's ID of the entry whether or not its tries are
// counted, in systemd-boot 252 (ID "stagehand-a+2-1.conf") and later (ID
// "stagehand-a.conf"). See Loader.
func EntryPattern(slot meta.Slot) string { return EntryID(slot) + "[.+]*" }

func checkSlot(slot meta.Slot) error {
	if slot != meta.SlotA && slot != meta.SlotB {
		return fmt.Errorf("slot %q is not a or b", slot)
	}
	return nil
}

// InstallLoader implements boot.Backend: it copies systemd-boot to the
// removable media path EFI/BOOT/BOOTX64.EFI (what the firmware boots
// without a boot entry) and to EFI/systemd/, and writes loader/loader.conf
// (timeout 0) if there is none.
func (s *Loader) InstallLoader(ctx context.Context) error {
	efi, err := os.ReadFile(s.loader)
	if err != nil {
		return fmt.Errorf("installing systemd-boot: %w (Debian package systemd-boot-efi)", err)
	}
	for _, p := range []string{fallbackEFI, systemdEFI} {
		if err := s.esp.WriteFile(p, bytes.NewReader(efi)); err != nil {
			return fmt.Errorf("installing systemd-boot: %w", err)
		}
	}
	if _, err := s.esp.ReadFile(loaderConf); errors.Is(err, fs.ErrNotExist) {
		if err := s.writeLoaderConf(nil); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("installing systemd-boot: %w", err)
	}
	return s.esp.Sync()
}

// entryFiles returns slot's entry file names (with any counter), Type #1
// entries first, each kind sorted.
func (s *Loader) entryFiles(slot meta.Slot) ([]EntryName, error) {
	var out []EntryName
	for _, kind := range []struct {
		dir   string
		parse func(string) (EntryName, error)
	}{{entriesDir, ParseEntryName}, {ukiDir, ParseUKIName}} {
		names, err := s.esp.ReadDir(kind.dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading loader entries in %s: %w", kind.dir, err)
		}
		for _, n := range names {
			en, err := kind.parse(n)
			if err == nil && en.ID == EntryID(slot) {
				out = append(out, en)
			}
		}
	}
	return out, nil
}

// maxTries bounds Image.Tries: more makes no sense for a trial, and
// systemd-boot caps its counters at INT_MAX.
const maxTries = 1000

// InstallSlot implements boot.Backend. With img.Tries the entry is
// stagehand-X+Tries.conf (stagehand-X+Tries.efi for a UKI); any other entry
// file of the slot, of either kind, is removed first.
func (s *Loader) InstallSlot(ctx context.Context, slot meta.Slot, img boot.Image) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if img.Tries < 0 || img.Tries > maxTries {
		return fmt.Errorf("installing slot %s: %d tries is not between 0 and %d", slot, img.Tries, maxTries)
	}
	if img.UKI != nil {
		if img.Kernel != nil || img.Initramfs != nil {
			return fmt.Errorf("installing slot %s: a UKI carries its kernel and initramfs; give one or the other", slot)
		}
		return s.installUKI(ctx, slot, img)
	}
	if img.Kernel == nil || img.Initramfs == nil {
		return fmt.Errorf("installing slot %s: kernel and initramfs are both needed", slot)
	}
	dir := path.Join(slotsDir, string(slot))
	opts := boot.SlotParam + "=" + string(slot)
	for _, o := range strings.Fields(img.Cmdline) {
		if !strings.HasPrefix(o, boot.SlotParam+"=") { // the slot is this one's to say
			opts += " " + o
		}
	}
	title := "stagehand slot " + strings.ToUpper(string(slot))
	if img.Version != "" {
		title += " (" + img.Version + ")"
	}
	// The entry installed last is listed first (nextSortKey): what a
	// trial armed without boot-once needs (boot.CountedDefault).
	other := ""
	if o, _, err := s.slotEntry(slot.Other()); err == nil {
		other = o.SortKey
	}
	e := &Entry{
		Title:   title,
		Version: img.Version,
		Linux:   "/" + path.Join(dir, "vmlinuz"),
		Initrd:  []string{"/" + path.Join(dir, "initramfs")},
		Options: opts,
		Extra:   []Field{{"sort-key", nextSortKey(other)}},
	}
	conf, err := e.Marshal()
	if err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := s.removeEntries(ctx, slot); err != nil {
		return err
	}
	if err := s.esp.WriteFile(path.Join(dir, "vmlinuz"), img.Kernel); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.esp.WriteFile(path.Join(dir, "initramfs"), img.Initramfs); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := s.esp.Sync(); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	// The entry is written under a name systemd-boot does not list
	// (stagehand-b.part), synced, then renamed: the rename is one write of
	// a directory sector, so a cut leaves no half-written entry among the
	// entries (the data of a file written in one go may land after its
	// directory entry).
	part := path.Join(entriesDir, EntryID(slot)+".part")
	if err := s.esp.WriteFile(part, bytes.NewReader(conf)); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := s.esp.Sync(); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	name := EntryName{ID: EntryID(slot), Counting: img.Tries > 0, Left: img.Tries}.Path()
	if err := s.esp.Rename(part, name); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	return s.esp.Sync()
}

// loaderConfig reads loader.conf; none is an empty one.
func (s *Loader) loaderConfig() ([]Field, error) {
	b, err := s.esp.ReadFile(loaderConf)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", loaderConf, err)
	}
	return ParseConfig(b), nil
}

// writeLoaderConf writes loader.conf with the given default entry (none
// when nil), timeout 0, and the other keys of the current file kept.
func (s *Loader) writeLoaderConf(def *string) error {
	cur, err := s.loaderConfig()
	if err != nil {
		return err
	}
	var out []Field
	if def != nil {
		out = append(out, Field{"default", *def})
	}
	hasTimeout := false
	for _, f := range cur {
		switch f.Key {
		case "default":
			if def == nil {
				out = append(out, f)
			}
			continue
		case "timeout":
			hasTimeout = true
		}
		out = append(out, f)
	}
	if !hasTimeout {
		out = append(out, Field{"timeout", "0"})
	}
	b, err := FormatConfig(out)
	if err != nil {
		return fmt.Errorf("writing %s: %w", loaderConf, err)
	}
	if err := s.esp.WriteFile(loaderConf, bytes.NewReader(b)); err != nil {
		return fmt.Errorf("writing %s: %w", loaderConf, err)
	}
	return s.esp.Sync()
}

// SetDefault implements boot.Backend: loader.conf's default is EntryPattern,
// which systemd-boot matches against slot's entry whatever its counter.
func (s *Loader) SetDefault(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	old, err := s.entryFiles(slot)
	if err != nil {
		return err
	}
	if len(old) == 0 {
		return fmt.Errorf("making slot %s the default: it has no loader entry", slot)
	}
	def := EntryPattern(slot)
	if err := s.writeLoaderConf(&def); err != nil {
		return err
	}
	// A default in the firmware's variables would win over loader.conf's:
	// drop it, once loader.conf is synced, so that one place says.
	if s.vars == nil {
		return nil
	}
	switch _, _, err := s.vars.Get(DefaultVar, efivar.LoaderVendor); {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("reading %s: %w", DefaultVar, err)
	}
	if err := s.vars.Remove(DefaultVar, efivar.LoaderVendor); err != nil {
		return fmt.Errorf("making slot %s the default: removing %s, which systemd-boot prefers to loader.conf: %w", slot, DefaultVar, err)
	}
	return nil
}

// Default implements boot.Backend: the slot whose entry the default matches, as
// systemd-boot matches it: LoaderEntryDefault's when that variable is set,
// else loader.conf's.
func (s *Loader) Default(ctx context.Context) (meta.Slot, error) {
	if s.vars != nil {
		v, err := efivar.GetString(s.vars, DefaultVar, efivar.LoaderVendor)
		switch {
		case err == nil && v != "":
			slot, err := s.matchSlot(v)
			if err != nil {
				return "", fmt.Errorf("the default entry in %s: %w", DefaultVar, err)
			}
			return slot, nil
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("reading %s: %w", DefaultVar, err)
		}
	}
	def, err := s.confDefault()
	if err != nil {
		return "", err
	}
	switch def {
	case "":
		return "", fmt.Errorf("%s names no default entry", loaderConf)
	case CountedDefaultPattern:
		return s.countedDefaultSlot()
	}
	slot, err := s.matchSlot(def)
	if err != nil {
		return "", fmt.Errorf("%s's default entry: %w", loaderConf, err)
	}
	return slot, nil
}

// matchSlot returns the slot whose entry the glob pattern names, as
// systemd-boot matches it. systemd-boot 252 matches the entry's file name,
// later versions the file name without the counter (see Loader): a
// pattern that matches an entry under one rule only is an error, since what
// boots would depend on the loader's version.
func (s *Loader) matchSlot(pattern string) (meta.Slot, error) {
	pattern = strings.ToLower(pattern)
	if _, err := path.Match(pattern, ""); err != nil {
		return "", fmt.Errorf("%q is not a glob pattern: %w", pattern, err)
	}
	var found []meta.Slot
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		names, err := s.entryFiles(slot)
		if err != nil {
			return "", err
		}
		for _, n := range names {
			file := strings.ToLower(n.String())
			byFile, _ := path.Match(pattern, file)
			byID, _ := path.Match(pattern, strings.ToLower(n.Plain().String()))
			if byFile != byID {
				return "", fmt.Errorf("%q matches slot %s's entry %s in some systemd-boot versions only (they match the file name with or without its boot counter): use %s",
					pattern, slot, n, EntryPattern(slot))
			}
			if byFile {
				found = append(found, slot)
				break
			}
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%q matches no stagehand slot's entry", pattern)
	case 1:
		return found[0], nil
	default:
		return "", fmt.Errorf("%q matches the entries of both slots", pattern)
	}
}

// ErrBadEntry marks a slot's Type #1 entry that does not parse: no linux
// line (a cut left it half written: systemd-boot skips it too), or keys
// stagehand never writes. Slots leaves such a slot out, and the apply
// writes the slot again.
var ErrBadEntry = errors.New("not a bootable loader entry")

// Slots implements boot.Backend. A slot whose entry systemd-boot would skip
// (ErrBadEntry) is left out.
func (s *Loader) Slots(ctx context.Context) ([]boot.SlotEntry, error) {
	var out []boot.SlotEntry
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		se, _, err := s.slotEntry(slot)
		if errors.Is(err, boot.ErrSlotEmpty) || errors.Is(err, ErrBadEntry) {
			// systemd-boot skips an entry with no linux line as well: a
			// slot half written by a cut that an earlier version's
			// install left (the apply writes it again).
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, se)
	}
	return out, nil
}

// entryName returns the name of slot's one entry file: boot.ErrSlotEmpty when
// it has none, an error when it has several.
func (s *Loader) entryName(slot meta.Slot) (EntryName, error) {
	names, err := s.entryFiles(slot)
	if err != nil {
		return EntryName{}, err
	}
	switch len(names) {
	case 0:
		return EntryName{}, fmt.Errorf("slot %s: %w", slot, boot.ErrSlotEmpty)
	case 1:
		return names[0], nil
	default:
		return EntryName{}, fmt.Errorf("slot %s has %d loader entries (%s, %s): remove all but one", slot, len(names), names[0], names[1])
	}
}

// slotEntry reads slot's entry; the *Entry is nil for a UKI.
func (s *Loader) slotEntry(slot meta.Slot) (boot.SlotEntry, *Entry, error) {
	n, err := s.entryName(slot)
	if err != nil {
		return boot.SlotEntry{}, nil, err
	}
	if n.UKI {
		u, c, err := s.openUKI(n)
		if err != nil {
			return boot.SlotEntry{}, nil, fmt.Errorf("reading slot %s: %w", slot, err)
		}
		c.Close()
		return ukiEntry(slot, n, u), nil, nil
	}
	b, err := s.esp.ReadFile(path.Join(entriesDir, n.String()))
	if err != nil {
		return boot.SlotEntry{}, nil, fmt.Errorf("reading slot %s: %w", slot, err)
	}
	e, err := ParseEntry(b)
	if err != nil {
		return boot.SlotEntry{}, nil, fmt.Errorf("reading slot %s: %s: %w: %w", slot, n, ErrBadEntry, err)
	}
	se := boot.SlotEntry{
		Slot: slot, Version: e.Version, Cmdline: e.Options, Kernel: e.Linux,
		Counting: n.Counting, Left: n.Left, Done: n.Done,
		Description: path.Join(entriesDir, n.String()), SortKey: e.sortKey(),
	}
	if len(e.Initrd) > 0 {
		se.Initrd = e.Initrd[0]
	}
	return se, e, nil
}

// Bless implements boot.Blesser: it renames slot's counted entry
// (stagehand-b+LEFT-DONE.conf, whatever the counter) to stagehand-b.conf.
// An entry already blessed, by systemd-bless-boot for one, is left as it
// is, also when it was renamed between the look and the rename.
func (s *Loader) Bless(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	n, err := s.entryName(slot)
	if err != nil {
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	if !n.Counting {
		return nil
	}
	if err := s.esp.Rename(n.Path(), n.Plain().Path()); err != nil {
		// systemd-bless-boot may have renamed it since: blessed is blessed.
		if now, nerr := s.entryName(slot); errors.Is(err, fs.ErrNotExist) && nerr == nil && !now.Counting {
			return nil
		}
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	if err := s.esp.Sync(); err != nil {
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	return nil
}

// OpenSlot implements boot.SlotReader: it opens the kernel and the initrds
// named by the slot's entry.
func (s *Loader) OpenSlot(ctx context.Context, slot meta.Slot) (*boot.SlotFiles, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	n, err := s.entryName(slot)
	if err != nil {
		return nil, err
	}
	if n.UKI {
		u, c, err := s.openUKI(n)
		if err != nil {
			return nil, fmt.Errorf("reading slot %s: %w", slot, err)
		}
		return &boot.SlotFiles{Entry: ukiEntry(slot, n, u), Kernel: u.Kernel(), Initramfs: u.Initramfs(), UKI: u.Whole(), Closers: []io.Closer{c}}, nil
	}
	se, e, err := s.slotEntry(slot)
	if err != nil {
		return nil, err
	}
	f := &boot.SlotFiles{Entry: se}
	kernel, err := s.esp.Open(entryPath(e.Linux))
	if err != nil {
		return nil, fmt.Errorf("reading slot %s's kernel: %w", slot, err)
	}
	f.Kernel, f.Closers = kernel, append(f.Closers, kernel)
	var initrds []io.Reader
	for _, p := range e.Initrd {
		if err := ctx.Err(); err != nil {
			f.Close()
			return nil, err
		}
		r, err := s.esp.Open(entryPath(p))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("reading slot %s's initramfs: %w", slot, err)
		}
		initrds, f.Closers = append(initrds, r), append(f.Closers, r)
	}
	f.Initramfs = io.MultiReader(initrds...)
	return f, nil
}

// ReadSlot reads what OpenSlot opens into memory: for tests and small
// slots.
func (s *Loader) ReadSlot(ctx context.Context, slot meta.Slot) (kernel, initramfs []byte, entry boot.SlotEntry, err error) {
	f, err := s.OpenSlot(ctx, slot)
	if err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	defer f.Close()
	if kernel, err = io.ReadAll(f.Kernel); err != nil {
		return nil, nil, boot.SlotEntry{}, fmt.Errorf("reading slot %s's kernel: %w", slot, err)
	}
	if initramfs, err = io.ReadAll(f.Initramfs); err != nil {
		return nil, nil, boot.SlotEntry{}, fmt.Errorf("reading slot %s's initramfs: %w", slot, err)
	}
	return kernel, initramfs, f.Entry, nil
}

// entryPath turns a path of an entry ("/stagehand/a/vmlinuz", from the
// ESP's root, backslashes allowed, as systemd-boot allows them) into an FS name.
func entryPath(p string) string {
	return strings.TrimPrefix(strings.ReplaceAll(p, `\`, "/"), "/")
}

// The systemd-boot variable that names the entry to boot once, and how it
// is written (as bootctl set-oneshot writes it).
const (
	OneShotVar   = "LoaderEntryOneShot"
	oneShotAttrs = efivar.NonVolatile | efivar.BootServiceAccess | efivar.RuntimeAccess
)

// SetBootOnce implements boot.BootOnce: LoaderEntryOneShot =
// EntryPattern(slot). systemd-boot reads and deletes the variable at the
// next firmware boot, boots the entry it matches, and counts a try of it if
// it counts tries.
func (s *Loader) SetBootOnce(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if s.vars == nil {
		return boot.ErrNoEFIVars
	}
	if _, err := s.entryName(slot); err != nil {
		return fmt.Errorf("booting slot %s once: %w", slot, err)
	}
	if err := efivar.SetString(s.vars, OneShotVar, efivar.LoaderVendor, oneShotAttrs, EntryPattern(slot)); err != nil {
		return fmt.Errorf("booting slot %s once: %w", slot, err)
	}
	return nil
}

// ClearBootOnce implements boot.BootOnce.
func (s *Loader) ClearBootOnce(ctx context.Context) error {
	if s.vars == nil {
		return boot.ErrNoEFIVars
	}
	if err := s.vars.Remove(OneShotVar, efivar.LoaderVendor); err != nil {
		return fmt.Errorf("clearing boot once: %w", err)
	}
	return nil
}

// BootOnce implements boot.BootOnce: the slot whose entry LoaderEntryOneShot
// matches. A value that matches no slot's entry (another OS's entry, or
// one systemd-boot would not find) is an error naming it.
func (s *Loader) BootOnce(ctx context.Context) (meta.Slot, bool, error) {
	if s.vars == nil {
		return "", false, boot.ErrNoEFIVars
	}
	v, err := efivar.GetString(s.vars, OneShotVar, efivar.LoaderVendor)
	if errors.Is(err, fs.ErrNotExist) || err == nil && v == "" {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading boot once: %w", err)
	}
	slot, err := s.matchSlot(v)
	if err != nil {
		return "", false, fmt.Errorf("boot once (%s): %w", OneShotVar, err)
	}
	return slot, true, nil
}
