package systemdboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/uki"
)

// removeEntries removes slot's entries of both kinds, and syncs: a slot
// half written must not be bootable.
func (s *Loader) removeEntries(ctx context.Context, slot meta.Slot) error {
	old, err := s.entryFiles(slot)
	if err != nil {
		return err
	}
	for _, n := range old {
		if err := s.esp.Remove(n.Path()); err != nil {
			return fmt.Errorf("installing slot %s: %w", slot, err)
		}
	}
	if len(old) > 0 {
		if err := s.esp.Sync(); err != nil {
			return fmt.Errorf("installing slot %s: %w", slot, err)
		}
	}
	return ctx.Err()
}

// installUKI writes img.UKI as slot's Type #2 entry. It is written under a
// name systemd-boot does not list (stagehand-b.part), synced, then renamed
// to its entry name: a cut leaves no half-written image among the entries.
// The Type #1 files the slot may hold are removed, so that the ESP keeps
// room for one image per slot.
func (s *Loader) installUKI(ctx context.Context, slot meta.Slot, img boot.Image) error {
	if err := s.removeEntries(ctx, slot); err != nil {
		return err
	}
	dir := path.Join(slotsDir, string(slot))
	for _, f := range []string{"vmlinuz", "initramfs"} {
		if err := s.esp.Remove(path.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("installing slot %s: %w", slot, err)
		}
	}
	part := path.Join(ukiDir, EntryID(slot)+".part")
	if err := s.esp.WriteFile(part, img.UKI); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := s.esp.Sync(); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	n := EntryName{ID: EntryID(slot), Counting: img.Tries > 0, Left: img.Tries, UKI: true}
	u, c, err := s.openUKI(EntryName{ID: EntryID(slot) + ".part"}, part)
	if err == nil {
		c.Close()
		err = boot.CheckUKICmdline(u)
	}
	if err != nil {
		s.esp.Remove(part)
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	if err := s.esp.Rename(part, n.Path()); err != nil {
		return fmt.Errorf("installing slot %s: %w", slot, err)
	}
	return s.esp.Sync()
}

// openUKI opens the UKI of entry n (or at the path given) without reading
// its kernel and initramfs into memory.
func (s *Loader) openUKI(n EntryName, at ...string) (*uki.Image, io.Closer, error) {
	p := n.Path()
	if len(at) > 0 {
		p = at[0]
	}
	r, err := s.esp.Open(p)
	if err != nil {
		return nil, nil, err
	}
	ra, size, err := readerAt(r)
	if err != nil {
		r.Close()
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	u, err := uki.Open(ra, size)
	if err != nil {
		r.Close()
		return nil, nil, fmt.Errorf("%s: %w", p, err)
	}
	return u, r, nil
}

// readerAt gives random access to a file opened on an FS: the ESP's
// readers and *os.File have it; any other is read into memory.
func readerAt(r io.Reader) (io.ReaderAt, int64, error) {
	switch f := r.(type) {
	case interface {
		io.ReaderAt
		Size() int64
	}:
		return f, f.Size(), nil
	case *os.File:
		st, err := f.Stat()
		if err != nil {
			return nil, 0, err
		}
		return f, st.Size(), nil
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, 0, err
	}
	return strings.NewReader(string(b)), int64(len(b)), nil
}

// ukiEntry describes slot's UKI entry n: its command line is the UKI's
// with stagehand.slot= first, as a kexec into it passes it.
func ukiEntry(slot meta.Slot, n EntryName, u *uki.Image) boot.SlotEntry {
	opts := boot.SlotParam + "=" + string(slot)
	for _, p := range cmdline.Parse(u.Cmdline) {
		if p.Key != boot.SlotParam {
			opts += " " + p.String()
		}
	}
	return boot.SlotEntry{
		Slot: slot, Version: u.Version(), Cmdline: opts, Kernel: "/" + n.Path(), UKI: true, Signed: u.File.CertTableSize > 0,
		Counting: n.Counting, Left: n.Left, Done: n.Done, Description: n.Path(),
	}
}
