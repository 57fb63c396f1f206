package crashstate

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
)

// SectorSize is the unit writes are recorded and torn in.
const SectorSize = 512

// Vars is a snapshot of an EFI variable directory (efivar.Dir): file name
// to contents.
type Vars map[string][]byte

// ReadVars snapshots the variable directory dir.
func ReadVars(dir string) (Vars, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading EFI variables: %w", err)
	}
	v := Vars{}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading EFI variables: %w", err)
		}
		v[de.Name()] = b
	}
	return v, nil
}

// Write makes dir (empty or absent) hold exactly v.
func (v Vars) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, b := range v {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("writing EFI variables: %w", err)
		}
	}
	return nil
}

func (v Vars) equal(w Vars) bool {
	if len(v) != len(w) {
		return false
	}
	for k, b := range v {
		if c, ok := w[k]; !ok || !bytes.Equal(b, c) {
			return false
		}
	}
	return true
}

func (v Vars) key() string {
	names := make([]string, 0, len(v))
	for k := range v {
		names = append(names, k)
	}
	sort.Strings(names)
	var sb strings.Builder
	for _, k := range names {
		fmt.Fprintf(&sb, "%s=%x;", k, v[k])
	}
	return sb.String()
}

// Recording is a timeline of one run on an image: writes (sector-aligned,
// with the data the sectors held once the write completed), discards (a
// range made to read as zeros), flushes, and MARK entries "efivar N" where
// the EFI variables became Vars[N]. Vars[0] is the variables at the start.
type Recording struct {
	Entries []writelog.Entry
	Vars    []Vars
}

// MarkPrefix starts the MARK entry of an EFI variable change.
const MarkPrefix = "efivar "

// Recorder records the changes to an image through the disk package
// (disk.Record) and the changes of an EFI variable directory, in one
// order: the variables are compared at every disk event, so a change is
// placed after the disk events that completed before it and before those
// issued after it.
type Recorder struct {
	img     *os.File
	varDir  string
	rec     Recording
	err     error
	stopRec func()
}

var _ disk.Recorder = (*Recorder)(nil)

// Start records the image at img and the variables in varDir until Stop.
func Start(img, varDir string) (*Recorder, error) {
	v, err := ReadVars(varDir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(img)
	if err != nil {
		return nil, fmt.Errorf("recording %s: %w", img, err)
	}
	r := &Recorder{img: f, varDir: varDir, rec: Recording{Vars: []Vars{v}}}
	if r.stopRec, err = disk.Record(img, r); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// Stop ends the recording and returns it.
func (r *Recorder) Stop() (*Recording, error) {
	r.stopRec()
	r.pollVars()
	r.img.Close()
	return &r.rec, r.err
}

func (r *Recorder) pollVars() {
	v, err := ReadVars(r.varDir)
	if err != nil {
		r.fail(err)
		return
	}
	if v.equal(r.rec.Vars[len(r.rec.Vars)-1]) {
		return
	}
	r.rec.Vars = append(r.rec.Vars, v)
	r.rec.Entries = append(r.rec.Entries, writelog.Entry{Flags: writelog.Mark, Mark: MarkPrefix + strconv.Itoa(len(r.rec.Vars)-1)})
}

func (r *Recorder) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// readBack records the sectors covering [off, off+n) as they read now.
func (r *Recorder) readBack(off, n int64) {
	from := off / SectorSize * SectorSize
	to := (off + n + SectorSize - 1) / SectorSize * SectorSize
	b := make([]byte, to-from)
	if _, err := r.img.ReadAt(b, from); err != nil {
		r.fail(fmt.Errorf("reading back a write at %d: %w", off, err))
		return
	}
	r.rec.Entries = append(r.rec.Entries, writelog.Entry{Sector: uint64(from / SectorSize), NrSectors: uint64(len(b) / SectorSize), Data: b})
}

// Wrote implements disk.Recorder.
func (r *Recorder) Wrote(off int64, p []byte) {
	r.pollVars()
	r.readBack(off, int64(len(p)))
}

// Zeroed implements disk.Recorder.
func (r *Recorder) Zeroed(off, n int64) {
	r.pollVars()
	if off%SectorSize != 0 || n%SectorSize != 0 {
		r.readBack(off, n)
		return
	}
	r.rec.Entries = append(r.rec.Entries, writelog.Entry{Sector: uint64(off / SectorSize), NrSectors: uint64(n / SectorSize), Flags: writelog.Discard})
}

// Flushed implements disk.Recorder.
func (r *Recorder) Flushed() {
	r.pollVars()
	r.rec.Entries = append(r.rec.Entries, writelog.Entry{Flags: writelog.Flush})
}
