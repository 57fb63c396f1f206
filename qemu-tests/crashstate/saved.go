package crashstate

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
)

// A saved state is one crash state kept as a regression input: a gzipped
// write log (dm-log-writes v1, writelog) whose writes are the image's data
// extents, and whose marks say the image's size ("size N"), the META
// generation durable at the last flush ("floor N"), what the state was
// ("state TEXT") and each EFI variable ("var NAME HEX"). A state saved
// against a base ("base FILE", a saved state in the same directory) holds
// only the sectors where it differs from that base.

// Save writes the image img, with the variables vars and the META
// generation floor, as a saved state at path; with base (an image file,
// saved as baseName beside path) only the sectors where img differs.
func Save(path, img string, vars Vars, floor uint64, what, base, baseName string) error {
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var bf *os.File
	if base != "" {
		if bf, err = os.Open(base); err != nil {
			return err
		}
		defer bf.Close()
	}
	var buf memWriter
	lw, err := writelog.NewWriter(&buf, SectorSize)
	if err != nil {
		return err
	}
	marks := []string{"size " + strconv.FormatInt(fi.Size(), 10), "floor " + strconv.FormatUint(floor, 10), "state " + what}
	if bf != nil {
		marks = append(marks, "base "+baseName)
		return saveDelta(path, f, bf, fi.Size(), marks, vars)
	}
	marks = append(marks, varMarks(vars)...)
	for _, m := range marks {
		if err := lw.Append(writelog.Entry{Flags: writelog.Mark, Mark: m}); err != nil {
			return fmt.Errorf("saving %s: %w", path, err)
		}
	}
	fd := int(f.Fd())
	for pos := int64(0); pos < fi.Size(); {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return fmt.Errorf("saving %s: %w", path, os.NewSyscallError("lseek", err))
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("saving %s: %w", path, os.NewSyscallError("lseek", err))
		}
		data = data / SectorSize * SectorSize
		for p := data; p < hole; {
			n := min(hole-p, 1<<20)
			n = (n + SectorSize - 1) / SectorSize * SectorSize
			b := make([]byte, n)
			if _, err := f.ReadAt(b, p); err != nil && err != io.EOF {
				return err
			}
			if !allZero(b) {
				if err := lw.Append(writelog.Entry{Sector: uint64(p / SectorSize), Data: b}); err != nil {
					return err
				}
			}
			p += n
		}
		pos = hole
	}
	return writeGz(path, lw, &buf)
}

// saveDelta saves the sectors of f that differ from base.
func saveDelta(path string, f, base *os.File, size int64, marks []string, vars Vars) error {
	var buf memWriter
	lw, err := writelog.NewWriter(&buf, SectorSize)
	if err != nil {
		return err
	}
	marks = append(marks, varMarks(vars)...)
	for _, m := range marks {
		if err := lw.Append(writelog.Entry{Flags: writelog.Mark, Mark: m}); err != nil {
			return fmt.Errorf("saving %s: %w", path, err)
		}
	}
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(a)) {
		n := min(int64(len(a)), size-off)
		if _, err := f.ReadAt(a[:n], off); err != nil && err != io.EOF {
			return err
		}
		if _, err := base.ReadAt(b[:n], off); err != nil && err != io.EOF {
			return err
		}
		for i := int64(0); i < n; i += SectorSize {
			if bytes.Equal(a[i:i+SectorSize], b[i:i+SectorSize]) {
				continue
			}
			j := i + SectorSize
			for j < n && !bytes.Equal(a[j:j+SectorSize], b[j:j+SectorSize]) {
				j += SectorSize
			}
			if err := lw.Append(writelog.Entry{Sector: uint64((off + i) / SectorSize), Data: append([]byte(nil), a[i:j]...)}); err != nil {
				return err
			}
			i = j - SectorSize
		}
	}
	return writeGz(path, lw, &buf)
}

func writeGz(path string, lw *writelog.Writer, buf *memWriter) error {
	if err := lw.Close(); err != nil {
		return err
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	zw.Write(buf.b)
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, z.Bytes(), 0o644)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Saved is a saved state read back.
type Saved struct {
	What  string
	Floor uint64
	Vars  Vars
	Base  string // the saved state this one is a delta to, "" for none
	size  int64
	log   *writelog.Log
	dir   string
}

// Load reads the saved state at path.
func Load(path string) (*Saved, error) {
	z, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, fmt.Errorf("reading saved state %s: %w", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("reading saved state %s: %w", path, err)
	}
	l, err := writelog.Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("reading saved state %s: %w", path, err)
	}
	s := &Saved{Vars: Vars{}, log: l, dir: filepath.Dir(path)}
	for _, e := range l.Entries {
		if e.Flags&writelog.Mark == 0 {
			continue
		}
		k, v, _ := strings.Cut(e.Mark, " ")
		switch k {
		case "size":
			s.size, err = strconv.ParseInt(v, 10, 64)
		case "floor":
			s.Floor, err = strconv.ParseUint(v, 10, 64)
		case "state":
			s.What = v
		case "base":
			s.Base = v
		case "var":
			n, h, _ := strings.Cut(v, " ")
			s.Vars[n], err = hex.DecodeString(h)
		}
		if err != nil {
			return nil, fmt.Errorf("reading saved state %s: mark %q: %w", path, e.Mark, err)
		}
	}
	if s.size <= 0 {
		return nil, fmt.Errorf("reading saved state %s: no image size", path)
	}
	return s, nil
}

// WriteImage makes the image file at path hold the saved state.
func (s *Saved) WriteImage(path string) error {
	if s.Base != "" {
		b, err := Load(filepath.Join(s.dir, s.Base))
		if err != nil {
			return err
		}
		if b.Base != "" {
			return fmt.Errorf("saved state %s: its base %s has a base itself", s.What, s.Base)
		}
		if err := b.WriteImage(path); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(s.size)
	if err == nil {
		err = Apply(f, s.log.Entries)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// memWriter is an io.WriterAt in memory.
type memWriter struct{ b []byte }

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}
	return copy(w.b[off:], p), nil
}

// varMarks are the log's marks that carry vars, in name order.
func varMarks(vars Vars) []string {
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)
	marks := make([]string, 0, len(names))
	for _, n := range names {
		marks = append(marks, "var "+n+" "+hex.EncodeToString(vars[n]))
	}
	return marks
}
