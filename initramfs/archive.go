package initramfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File is one entry of an archive.
type File struct {
	// Path is where the entry lies in the archive: slash-separated and
	// relative to the root ("init", "lib/modules/6.1.0/modules.dep").
	Path string
	// Source is a host file whose contents are copied at write time; when
	// empty, Data is the contents (a symlink's target for a symlink).
	Source string
	Data   []byte
	// Mode holds the permission bits and the type: none for a regular file,
	// fs.ModeDir, fs.ModeSymlink, or fs.ModeDevice (block) with
	// fs.ModeCharDevice for a character device.
	Mode fs.FileMode
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// Archive is a set of entries to write as one newc cpio archive. Entries are
// written sorted by path, each directory before what it holds, with fixed
// times, owners and inode numbers: the same entries (and the same contents
// of their sources) always give the same bytes.
type Archive struct {
	files   map[string]File
	modules *moduleSet
}

// New returns an empty archive.
func New() *Archive { return &Archive{files: map[string]File{}} }

// cleanPath checks p and returns it in canonical form.
func cleanPath(p string) (string, error) {
	c := path.Clean(strings.TrimPrefix(p, "/"))
	if p == "" || c == "." || c == ".." || strings.HasPrefix(c, "../") || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("initramfs path %q is not a file inside the archive", p)
	}
	return c, nil
}

// Add adds entries; adding a path twice is an error, unless both are the
// same directory.
func (a *Archive) Add(files ...File) error {
	for _, f := range files {
		p, err := cleanPath(f.Path)
		if err != nil {
			return err
		}
		f.Path = p
		if f.Source != "" && f.Mode.Type() != 0 {
			return fmt.Errorf("initramfs entry %s: a source file only makes a regular file", p)
		}
		switch f.Mode.Type() {
		case 0, fs.ModeDir, fs.ModeSymlink, fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		default:
			return fmt.Errorf("initramfs entry %s: unsupported file type %v", p, f.Mode.Type())
		}
		if old, ok := a.files[p]; ok {
			if old.Mode.IsDir() && f.Mode.IsDir() {
				continue
			}
			return fmt.Errorf("initramfs entry %s added twice", p)
		}
		a.files[p] = f
	}
	return nil
}

// AddFile adds the host file src at path p with permissions perm.
func (a *Archive) AddFile(p, src string, perm fs.FileMode) error {
	return a.Add(File{Path: p, Source: src, Mode: perm.Perm()})
}

// entries lists what WriteTo writes, sorted, with the parent directories
// that were not added explicitly and are not in skip.
func (a *Archive) entries(skip map[string]bool) ([]File, error) {
	all := map[string]File{}
	for p, f := range a.files {
		all[p] = f
	}
	if a.modules != nil {
		for _, f := range a.modules.files() {
			if _, ok := all[f.Path]; ok {
				return nil, fmt.Errorf("initramfs entry %s is both a file and a module", f.Path)
			}
			all[f.Path] = f
		}
	}
	for p := range all {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; ok {
				if !all[d].Mode.IsDir() {
					return nil, fmt.Errorf("initramfs entry %s is inside %s, which is not a directory", p, d)
				}
				continue
			}
			if !skip[d] {
				all[d] = File{Path: d, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	out := make([]File, 0, len(all))
	for _, f := range all {
		out = append(out, f)
	}
	// Sorting by path puts a directory before everything under it.
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// WriteTo writes the archive, with its trailer, to w.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	return a.write(w, nil)
}

func (a *Archive) write(w io.Writer, skip map[string]bool) (int64, error) {
	files, err := a.entries(skip)
	if err != nil {
		return 0, err
	}
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	rw := cpio.Newc.Writer(bw)
	for i, f := range files {
		rec, closer, err := record(f)
		if err != nil {
			return cw.n, err
		}
		rec.Ino = uint64(i + 1)
		err = rw.WriteRecord(cpio.MakeReproducible(rec))
		if closer != nil {
			closer.Close()
		}
		if err != nil {
			return cw.n, fmt.Errorf("writing initramfs entry %s: %w", f.Path, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return cw.n, fmt.Errorf("writing initramfs trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("writing initramfs: %w", err)
	}
	return cw.n, nil
}

// record turns f into a cpio record; a source file is opened and must be
// closed by the caller once the record is written.
func record(f File) (cpio.Record, io.Closer, error) {
	perm := uint64(f.Mode.Perm())
	if f.Mode&fs.ModeSetuid != 0 {
		perm |= cpio.S_ISUID
	}
	if f.Mode&fs.ModeSetgid != 0 {
		perm |= cpio.S_ISGID
	}
	if f.Mode&fs.ModeSticky != 0 {
		perm |= cpio.S_ISVTX
	}
	info := cpio.Info{Name: f.Path, NLink: 1}
	switch f.Mode.Type() {
	case fs.ModeDir:
		info.Mode, info.NLink = cpio.S_IFDIR|perm, 2
		return cpio.Record{Info: info}, nil, nil
	case fs.ModeSymlink:
		info.Mode = cpio.S_IFLNK | 0o777
		return cpio.StaticRecord(f.Data, info), nil, nil
	case fs.ModeDevice:
		info.Mode, info.Rmajor, info.Rminor = cpio.S_IFBLK|perm, uint64(f.Major), uint64(f.Minor)
		return cpio.Record{Info: info}, nil, nil
	case fs.ModeDevice | fs.ModeCharDevice:
		info.Mode, info.Rmajor, info.Rminor = cpio.S_IFCHR|perm, uint64(f.Major), uint64(f.Minor)
		return cpio.Record{Info: info}, nil, nil
	}
	info.Mode = cpio.S_IFREG | perm
	if f.Source == "" {
		return cpio.StaticRecord(f.Data, info), nil, nil
	}
	src, err := os.Open(f.Source)
	if err != nil {
		return cpio.Record{}, nil, fmt.Errorf("initramfs entry %s: %w", f.Path, err)
	}
	st, err := src.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		src.Close()
		return cpio.Record{}, nil, fmt.Errorf("initramfs entry %s: source %s: %w", f.Path, f.Source, err)
	}
	info.FileSize = uint64(st.Size())
	// A fresh reader per record: cpio closes ReaderAts that are Closers.
	return cpio.Record{ReaderAt: io.NewSectionReader(src, 0, st.Size()), Info: info}, src, nil
}

// Append writes base, zero padding to a 4-byte boundary, then the archive
// a: the kernel unpacks concatenated archives (compressed or not) one after
// the other, later entries replacing earlier ones. When base is an
// uncompressed newc archive, the parent directories that it already holds
// (as directories or symlinks, such as a usr-merged /lib) are not written
// again; with a compressed base they are, and a directory entry replaces a
// symlink of the same name.
func Append(w io.Writer, base []byte, a *Archive) (int64, error) {
	n, err := w.Write(base)
	total := int64(n)
	if err != nil {
		return total, fmt.Errorf("writing base initramfs: %w", err)
	}
	if pad := (4 - len(base)%4) % 4; pad > 0 {
		n, err := w.Write(make([]byte, pad))
		total += int64(n)
		if err != nil {
			return total, fmt.Errorf("writing base initramfs: %w", err)
		}
	}
	m, err := a.write(w, baseDirs(base))
	return total + m, err
}

// baseDirs lists the directories and symlinks of an uncompressed newc
// archive; nil for anything else.
func baseDirs(base []byte) map[string]bool {
	if !bytes.HasPrefix(base, []byte("070701")) {
		return nil
	}
	dirs := map[string]bool{}
	r := cpio.Newc.Reader(bytes.NewReader(base))
	for {
		rec, err := r.ReadRecord()
		if err != nil {
			return dirs // the trailer, the end, or damage: what was read stands
		}
		switch rec.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR, cpio.S_IFLNK:
			dirs[rec.Name] = true
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
