package fat

import (
	"fmt"
	"os"
)

// OverwriteFile writes p over the bytes of the existing file name from
// offset off, where they lie: into the file's clusters, through the device,
// leaving its size, its cluster chain, the FAT and its directory entry as
// they are; then it syncs (see Sync). It is how a file is changed that
// another program writes through the sectors it found it in, as GRUB's
// save_env writes grubenv (WriteFile may give a file new clusters). A write
// past the file's end is refused; fs.ErrNotExist when the file is absent.
// The device writes each sector whole or not at all, so a cut leaves every
// sector p covers old or new.
func (f *Volume) OverwriteFile(name string, off int64, p []byte) error {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("overwrite", name)
		}
		return err
	}
	fl, err := f.fs.OpenFile(espPath(name), os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
	}
	defer fl.Close()
	fi, err := fl.Stat()
	if err != nil {
		return fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
	}
	if fi.IsDir() {
		return fmt.Errorf("ESP: overwriting %s: a directory", espPath(name))
	}
	if off < 0 || off+int64(len(p)) > fi.Size() {
		return fmt.Errorf("ESP: overwriting %s: %d bytes at %d do not lie within its %d bytes", espPath(name), len(p), off, fi.Size())
	}
	if len(p) == 0 {
		return nil
	}
	runs, err := diskRanges(fl)
	if err != nil {
		return fmt.Errorf("ESP: overwriting %s: %w", espPath(name), err)
	}
	// Where each piece of p goes, all found before the first is written.
	type write struct {
		p   []byte
		off int64
	}
	var writes []write
	pos, rest := uint64(off), p
	for _, run := range runs {
		if len(rest) == 0 {
			break
		}
		if pos >= run.Length {
			pos -= run.Length
			continue
		}
		k := min(uint64(len(rest)), run.Length-pos)
		writes = append(writes, write{rest[:k], int64(run.Offset + pos)})
		rest, pos = rest[k:], 0
	}
	if len(rest) > 0 {
		return fmt.Errorf("ESP: overwriting %s: its clusters end %d bytes before its size", espPath(name), len(rest))
	}
	for _, w := range writes {
		// Through the storage, which keeps its shadows of the device
		// (the FAT's) right, and notes that there is something to sync.
		if _, err := f.st.WriteAt(w.p, w.off); err != nil {
			return fmt.Errorf("ESP: overwriting %s: %w", espPath(name), err)
		}
	}
	return f.Sync()
}
