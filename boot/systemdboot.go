package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/stagehand-dev/stagehand/meta"
)

// Where Debian's systemd-boot-efi puts the loader.
const SystemdBootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// The systemd-boot files on the ESP.
const (
	fallbackEFI = "EFI/BOOT/BOOTX64.EFI"
	systemdEFI  = "EFI/systemd/systemd-bootx64.efi"
	loaderConf  = "loader/loader.conf"
	entriesDir  = "loader/entries"
	slotsDir    = "stagehand"
)

// SystemdBoot is the systemd-boot backend: each slot is a Type #1 entry,
// loader/entries/stagehand-a.conf, loading stagehand/a/vmlinuz and
// stagehand/a/initramfs; loader.conf names the default entry.
type SystemdBoot struct {
	esp    FS
	loader string
}

var _ Backend = (*SystemdBoot)(nil)

// SystemdBootOption changes a SystemdBoot.
type SystemdBootOption func(*SystemdBoot)

// WithLoaderEFI installs the systemd-boot EFI binary at path instead of
// SystemdBootEFI.
func WithLoaderEFI(path string) SystemdBootOption { return func(s *SystemdBoot) { s.loader = path } }

// NewSystemdBoot returns the backend for the ESP esp.
func NewSystemdBoot(esp FS, opts ...SystemdBootOption) *SystemdBoot {
	s := &SystemdBoot{esp: esp, loader: SystemdBootEFI}
	for _, o := range opts {
		o(s)
	}
	return s
}

// EntryID is the ID of slot's entry ("stagehand-a").
func EntryID(slot meta.Slot) string { return "stagehand-" + string(slot) }

func checkSlot(slot meta.Slot) error {
	if slot != meta.SlotA && slot != meta.SlotB {
		return fmt.Errorf("slot %q is not a or b", slot)
	}
	return nil
}

// InstallLoader implements Backend: it copies systemd-boot to the removable
// media path EFI/BOOT/BOOTX64.EFI (what the firmware boots without a boot
// entry) and to EFI/systemd/, and writes loader/loader.conf (timeout 0) if
// there is none.
func (s *SystemdBoot) InstallLoader(ctx context.Context) error {
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

// entryFiles returns slot's entry file names (with any counter), sorted.
func (s *SystemdBoot) entryFiles(slot meta.Slot) ([]EntryName, error) {
	names, err := s.esp.ReadDir(entriesDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading loader entries: %w", err)
	}
	var out []EntryName
	for _, n := range names {
		en, err := ParseEntryName(n)
		if err == nil && en.ID == EntryID(slot) {
			out = append(out, en)
		}
	}
	return out, nil
}

// InstallSlot implements Backend.
func (s *SystemdBoot) InstallSlot(ctx context.Context, slot meta.Slot, img Image) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if img.Kernel == nil || img.Initramfs == nil {
		return fmt.Errorf("installing slot %s: kernel and initramfs are both needed", slot)
	}
	dir := path.Join(slotsDir, string(slot))
	opts := SlotParam + "=" + string(slot)
	for _, o := range strings.Fields(img.Cmdline) {
		if !strings.HasPrefix(o, SlotParam+"=") { // the slot is this one's to say
			opts += " " + o
		}
	}
	title := "stagehand slot " + strings.ToUpper(string(slot))
	if img.Version != "" {
		title += " (" + img.Version + ")"
	}
	e := &Entry{
		Title:   title,
		Version: img.Version,
		Linux:   "/" + path.Join(dir, "vmlinuz"),
		Initrd:  []string{"/" + path.Join(dir, "initramfs")},
		Options: opts,
	}
	conf, err := e.Marshal()
	if err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	old, err := s.entryFiles(slot)
	if err != nil {
		return err
	}
	// The old entry goes first: a slot half written must not be bootable.
	for _, n := range old {
		if err := s.esp.Remove(path.Join(entriesDir, n.String())); err != nil {
			return fmt.Errorf("installing slot %s: %w", slot, err)
		}
	}
	if err := s.esp.Sync(); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := ctx.Err(); err != nil {
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
	name := EntryName{ID: EntryID(slot)}.String()
	if err := s.esp.WriteFile(path.Join(entriesDir, name), bytes.NewReader(conf)); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	return s.esp.Sync()
}

// loaderConfig reads loader.conf; none is an empty one.
func (s *SystemdBoot) loaderConfig() ([]Field, error) {
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
func (s *SystemdBoot) writeLoaderConf(def *string) error {
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

// SetDefault implements Backend: loader.conf's default names the slot's
// entry by ID, which matches it with or without a boot counter.
func (s *SystemdBoot) SetDefault(ctx context.Context, slot meta.Slot) error {
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
	def := EntryID(slot) + ".conf"
	return s.writeLoaderConf(&def)
}

// Default implements Backend.
func (s *SystemdBoot) Default(ctx context.Context) (meta.Slot, error) {
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
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		if def == EntryID(slot)+".conf" || def == EntryID(slot) {
			return slot, nil
		}
	}
	if def == "" {
		return "", fmt.Errorf("%s names no default entry", loaderConf)
	}
	return "", fmt.Errorf("%s's default entry %q is not a stagehand slot", loaderConf, def)
}

// Slots implements Backend.
func (s *SystemdBoot) Slots(ctx context.Context) ([]SlotEntry, error) {
	var out []SlotEntry
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		names, err := s.entryFiles(slot)
		if err != nil {
			return nil, err
		}
		switch len(names) {
		case 0:
			continue
		case 1:
		default:
			return nil, fmt.Errorf("slot %s has %d loader entries (%s, %s): remove all but one", slot, len(names), names[0], names[1])
		}
		n := names[0]
		b, err := s.esp.ReadFile(path.Join(entriesDir, n.String()))
		if err != nil {
			return nil, fmt.Errorf("reading slot %s: %w", slot, err)
		}
		e, err := ParseEntry(b)
		if err != nil {
			return nil, fmt.Errorf("reading slot %s: %s: %w", slot, n, err)
		}
		se := SlotEntry{
			Slot: slot, Version: e.Version, Cmdline: e.Options, Kernel: e.Linux,
			Counting: n.Counting, Left: n.Left, Done: n.Done,
			Description: path.Join(entriesDir, n.String()),
		}
		if len(e.Initrd) > 0 {
			se.Initrd = e.Initrd[0]
		}
		out = append(out, se)
	}
	return out, nil
}
