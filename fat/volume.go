package fat

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/stagehand-dev/stagehand/disk"
)

// Device is where a volume lies: a partition region of a disk (a
// *disk.Region) or any file.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Volume is a FAT32 file system read and written with go-diskfs on a
// device, without mounting it: the way for an image file, and for a disk
// whose ESP nothing has mounted (the pre-stage init, `stager disk init`).
// Names are slash-separated paths from the root, without a leading slash.
type Volume struct {
	dev  Device
	st   *storage // dev as go-diskfs writes it
	fs   *fat32.FileSystem
	size int64
	bufs [2][]byte // writeRuns's buffers, kept from one file to the next
	// repair: something go-diskfs leaves wrong beyond the FSInfo counts
	// may be on the device (a directory made, a file removed without its
	// clusters freed): the next Sync runs repairFAT.
	repair bool
}

// Format writes an empty FAT32 file system of size bytes, with the volume
// label label, on dev.
func Format(dev Device, size int64, label string) (*Volume, error) {
	if size == 64<<20 {
		// mtools and fsck.fat reject go-diskfs's 64 MiB FAT32 (NOTES.md).
		return nil, errors.New("formatting ESP: a FAT32 of exactly 64 MiB is not readable by every tool; use another size")
	}
	st := newStorage(dev, size)
	f, err := fat32.Create(st, size, 0, 512, label, false)
	if err != nil {
		return nil, fmt.Errorf("formatting ESP: %w", err)
	}
	esp := &Volume{dev: dev, st: st, fs: f, size: size, repair: true}
	if err := esp.Sync(); err != nil {
		return nil, fmt.Errorf("formatting ESP: %w", err)
	}
	return esp, nil
}

// Open reads the FAT32 file system of size bytes on dev, first putting
// right what an earlier writer cut short may have left (see repairFAT); a
// clean file system is not written. On a device opened read-only the repair
// cannot write and is skipped: reading does not need it.
func Open(dev Device, size int64) (*Volume, error) {
	st := newStorage(dev, size)
	r, rerr := repairFAT(st)
	if rerr == nil && r.any() {
		if err := st.Sync(); err != nil {
			return nil, fmt.Errorf("reading ESP: syncing its repair: %w", err)
		}
	}
	f, err := fat32.Read(st, size, 0, 512)
	if err != nil {
		return nil, fmt.Errorf("reading ESP: %w", err)
	}
	// A repair that failed is tried again at the first Sync.
	return &Volume{dev: dev, st: st, fs: f, size: size, repair: rerr != nil}, nil
}

func espPath(name string) string { return "/" + strings.TrimPrefix(path.Clean("/"+name), "/") }

// readDir lists the directory at p (an espPath); go-diskfs's ReadDir takes
// io/fs paths.
func (f *Volume) readDir(p string) ([]fs.DirEntry, error) {
	q := strings.TrimPrefix(p, "/")
	if q == "" {
		q = "."
	}
	return f.fs.ReadDir(q)
}

// exists tells whether name is on the ESP, walking down from the root;
// go-diskfs's errors do not say "not exist" in a way errors.Is sees.
func (f *Volume) exists(name string) (bool, error) {
	p := espPath(name)
	if p == "/" {
		return true, nil
	}
	dir := "/"
	for _, part := range strings.Split(p[1:], "/") {
		ents, err := f.readDir(dir)
		if err != nil {
			return false, fmt.Errorf("ESP: reading %s: %w", dir, err)
		}
		found := false
		for _, e := range ents {
			if strings.EqualFold(e.Name(), part) {
				found = true
				break
			}
		}
		if !found {
			return false, nil
		}
		dir = path.Join(dir, part)
	}
	return true, nil
}

func notExist(op, name string) error {
	return &fs.PathError{Op: op, Path: "ESP:" + espPath(name), Err: fs.ErrNotExist}
}

// ReadFile returns a file's contents; fs.ErrNotExist when it is absent. It
// reads through Open: go-diskfs's ReadFile returns bytes past the end of a
// file whose reads do not fall on cluster boundaries (its Read does not cap
// a read that starts inside a cluster at the file's size).
func (f *Volume) ReadFile(name string) ([]byte, error) {
	r, err := f.Open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("ESP: reading %s: %w", espPath(name), err)
	}
	return b, nil
}

// Open opens a file for reading; fs.ErrNotExist when it is absent. The
// file is read from its cluster runs, each read as large as the caller's
// buffer (go-diskfs reads a cluster at a time and walks the file's whole
// cluster chain at every read).
func (f *Volume) Open(name string) (io.ReadCloser, error) {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("open", name)
		}
		return nil, err
	}
	fl, err := f.fs.OpenFile(espPath(name), os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
	}
	defer fl.Close()
	fi, err := fl.Stat()
	if err != nil {
		return nil, fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
	}
	var runs []fat12.DiskRange
	if fi.Size() > 0 {
		if runs, err = diskRanges(fl); err != nil {
			return nil, fmt.Errorf("ESP: opening %s: %w", espPath(name), err)
		}
	}
	return &runReader{dev: f.dev, runs: runs, all: runs, left: fi.Size(), size: fi.Size()}, nil
}

// diskRanges returns the runs of clusters a go-diskfs file occupies.
func diskRanges(fl filesystem.File) ([]fat12.DiskRange, error) {
	r, ok := fl.(interface {
		GetDiskRanges() ([]fat12.DiskRange, error)
	})
	if !ok {
		return nil, fmt.Errorf("go-diskfs file %T does not say where its clusters are", fl)
	}
	return r.GetDiskRanges()
}

// runReader reads the first left bytes of runs of a device; ReadAt reads
// anywhere in the file's size bytes.
type runReader struct {
	dev  io.ReaderAt
	runs []fat12.DiskRange
	off  uint64 // read so far of runs[0]
	left int64
	all  []fat12.DiskRange
	size int64
}

// Size is the file's size.
func (r *runReader) Size() int64 { return r.size }

// ReadAt implements io.ReaderAt over the file's clusters.
func (r *runReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ESP: reading at %d: negative offset", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	short := off+int64(len(p)) > r.size
	if short {
		p = p[:r.size-off]
	}
	n, pos := 0, uint64(off)
	for _, run := range r.all {
		if len(p) == 0 {
			break
		}
		if pos >= run.Length {
			pos -= run.Length
			continue
		}
		k := min(uint64(len(p)), run.Length-pos)
		m, err := r.dev.ReadAt(p[:k], int64(run.Offset+pos))
		n += m
		if err != nil && (err != io.EOF || uint64(m) != k) {
			return n, err
		}
		p, pos = p[k:], 0
	}
	if len(p) > 0 {
		return n, fmt.Errorf("ESP: the file's clusters end before its size: %w", io.ErrUnexpectedEOF)
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

func (r *runReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	for len(r.runs) > 0 && r.off >= r.runs[0].Length {
		r.runs, r.off = r.runs[1:], 0
	}
	if len(r.runs) == 0 {
		return 0, fmt.Errorf("ESP: the file's clusters end %d bytes before its size: %w", r.left, io.ErrUnexpectedEOF)
	}
	n := min(int64(len(p)), r.left, int64(r.runs[0].Length-r.off))
	k, err := r.dev.ReadAt(p[:n], int64(r.runs[0].Offset+r.off))
	r.off += uint64(k)
	r.left -= int64(k)
	if err == io.EOF && int64(k) == n {
		err = nil
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}

func (r *runReader) Close() error { return nil }

// writeChunk is the size of the writes of file data, and bounds the memory
// WriteFile uses.
const writeChunk = 4 << 20

// maxFileSize is the largest file FAT32 holds.
const maxFileSize = 1<<32 - 1

// directDevice is a Device that also writes bypassing the page cache
// (*disk.Region).
type directDevice interface {
	OpenDirect() (*disk.DirectWriter, error)
}

// WriteFile creates or replaces a file, creating its directories. A reader
// that says how much it holds (Len, as *bytes.Reader and *strings.Reader
// have, or Size and Seek, as *io.SectionReader has) gets its clusters in one
// allocation, and its bytes go straight to them in writeChunk writes,
// bypassing the page cache where the device can (see writeRuns); it must
// hold exactly that much. Any other reader is written through go-diskfs in
// writeChunk pieces (go-diskfs allocates clusters and writes the whole FAT
// at each write, and writes a cluster at a time). A file that exists is
// written in place (see create).
func (f *Volume) WriteFile(name string, r io.Reader) error {
	p := espPath(name)
	n, sized := readerSize(r)
	old, err := f.exists(name)
	if err != nil {
		return err
	}
	if !old && len(f.st.freed) > 0 && !f.fits(0) {
		// Too few clusters for a new file and its directories, but for
		// those go-diskfs does not know are free.
		if err := f.reload(); err != nil {
			return err
		}
	}
	if dir := path.Dir(p); dir != "/" && !old {
		if ok, err := f.exists(dir); err != nil {
			return err
		} else if !ok {
			if err := f.fs.Mkdir(dir); err != nil {
				return fmt.Errorf("ESP: creating %s: %w", dir, err)
			}
			f.repair = true // go-diskfs's ".." of a directory in the root
		}
	}
	w, kept, err := f.create(p, old, n, sized)
	if err != nil {
		return err
	}
	if len(f.st.freed) > 0 && (!sized || !f.fits(n-kept)) {
		// The clusters go-diskfs does not know are free may be needed.
		w.Close()
		if err := f.reload(); err != nil {
			return err
		}
		if w, err = f.fs.OpenFile(p, os.O_RDWR); err != nil {
			return fmt.Errorf("ESP: opening %s: %w", p, err)
		}
	}
	if sized {
		err = f.writeSized(w, r, n)
	} else {
		err = writeChunked(w, r)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ESP: writing %s: %w", p, err)
	}
	return nil
}

// create returns the file at p (an espPath) open for writing, for n bytes
// when sized: when old, the file there, written where it is, else a new
// one. An old file no larger than n keeps its clusters, to grow from them
// (go-diskfs then writes the FAT once, not at truncating and again at
// growing, and not at all when they are as many), and its size is
// returned; any other is truncated, which frees all its clusters but the
// first.
func (f *Volume) create(p string, old bool, n int64, sized bool) (filesystem.File, int64, error) {
	if old {
		w, err := f.fs.OpenFile(p, os.O_RDWR)
		if err != nil {
			return nil, 0, fmt.Errorf("ESP: replacing %s: %w", p, err)
		}
		if fi, err := w.Stat(); err == nil && !fi.IsDir() {
			keep := sized && fi.Size() <= n
			if !keep {
				w.Close()
				if w, err = f.fs.OpenFile(p, os.O_RDWR|os.O_TRUNC); err != nil {
					return nil, 0, fmt.Errorf("ESP: replacing %s: %w", p, err)
				}
			}
			if keep && fi.Size() > 0 {
				return w, fi.Size(), nil // it has clusters, which go-diskfs follows
			}
			if cs, err := clusterChain(w); err == nil && len(cs) == 1 && cs[0] >= 2 {
				return w, 0, nil
			}
		}
		// No cluster (an empty file of another writer), a directory:
		// removed and made again.
		w.Close()
		if err := f.remove(p); err != nil {
			return nil, 0, fmt.Errorf("ESP: replacing %s: %w", p, err)
		}
	}
	w, err := f.fs.OpenFile(p, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return nil, 0, fmt.Errorf("ESP: creating %s: %w", p, err)
	}
	return w, 0, nil
}

// clusterChain returns the clusters of a go-diskfs file.
func clusterChain(fl filesystem.File) ([]uint32, error) {
	c, ok := fl.(interface{ GetClusterChain() ([]uint32, error) })
	if !ok {
		return nil, fmt.Errorf("go-diskfs file %T does not say where its clusters are", fl)
	}
	return c.GetClusterChain()
}

// remove removes the file at p (an espPath) through
// go-diskfs, and frees its clusters, which go-diskfs's Remove leaves
// allocated: truncation frees all but the first in go-diskfs's table; that
// one the storage frees on the device once the directory entry is gone,
// and at every later write of the FAT (go-diskfs holds it as used and so
// never hands it out). When the clusters are not known, the next Sync's
// repairFAT frees them.
func (f *Volume) remove(p string) error {
	var chain []uint32
	if t, err := f.fs.OpenFile(p, os.O_RDWR|os.O_TRUNC); err == nil {
		chain, _ = clusterChain(t)
		t.Close()
	}
	if err := f.fs.Remove(p); err != nil {
		return err
	}
	if _, err := f.st.geometry(); err != nil || len(chain) == 0 {
		f.repair = true
		return nil
	}
	if err := f.st.release(chain); err != nil {
		f.repair = true
		return fmt.Errorf("freeing its clusters: %w", err)
	}
	return nil
}

// fits tells whether go-diskfs has the clusters for n bytes more, and a few
// for directories, without those it does not know are free.
func (f *Volume) fits(n int64) bool {
	g, err := f.st.geometry()
	if err != nil {
		return false
	}
	free, err := f.st.freeClusters()
	if err != nil {
		return false
	}
	return (n+g.clusterSize()-1)/g.clusterSize()+4 <= free-int64(len(f.st.freed))
}

// reload reads the go-diskfs file system again, from what the device
// holds: it then knows the clusters freed behind its back.
func (f *Volume) reload() error {
	fs, err := fat32.Read(f.st, f.size, 0, 512)
	if err != nil {
		return fmt.Errorf("ESP: reading it again: %w", err)
	}
	f.fs, f.st.freed = fs, nil
	return nil
}

// readerSize returns how many bytes r has left to read, when it says.
func readerSize(r io.Reader) (int64, bool) {
	switch v := r.(type) {
	case interface{ Len() int }:
		return int64(v.Len()), true
	case interface {
		Size() int64
		io.Seeker
	}:
		pos, err := v.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, false
		}
		return v.Size() - pos, true
	}
	return 0, false
}

// writeSized writes the n bytes of r into the new, empty file w.
func (f *Volume) writeSized(w filesystem.File, r io.Reader, n int64) error {
	if n > maxFileSize {
		return fmt.Errorf("%d bytes is more than a FAT32 file holds (4 GiB - 1)", n)
	}
	if n > 0 {
		// Writing the last byte makes go-diskfs allocate every cluster up
		// to it at once, first fit: one run on an ESP whose free space is.
		if _, err := w.Seek(n-1, io.SeekStart); err != nil {
			return err
		}
		if _, err := w.Write([]byte{0}); err != nil {
			return err
		}
		runs, err := diskRanges(w)
		if err != nil {
			return err
		}
		if err := f.writeRuns(runs, r, n); err != nil {
			return err
		}
	}
	if k, err := r.Read(make([]byte, 1)); k > 0 || (err != nil && err != io.EOF) {
		if err == nil {
			err = fmt.Errorf("the reader holds more than the %d bytes it said", n)
		}
		return err
	}
	return nil
}

// writeRuns copies the n bytes of r into the runs of the device, in file
// order, in writeChunk writes, reading the next chunk while the last one is
// written. Where the device can, the writes bypass the page cache
// (O_DIRECT): no copy, and nothing left for a sync to flush but the device's
// cache. Direct writes need aligned offsets, and go-diskfs's FAT32 does not
// align its data area (a 300 MiB ESP's clusters start 3 KiB past a 4 KiB
// boundary): the head of each run up to the first aligned offset, and any
// tail shorter than the alignment, go through the page cache. A device that
// refuses direct I/O gets it all through the page cache.
func (f *Volume) writeRuns(runs []fat12.DiskRange, r io.Reader, n int64) error {
	var dw *disk.DirectWriter
	if d, ok := f.dev.(directDevice); ok {
		if w, err := d.OpenDirect(); err == nil {
			dw = w
			defer func() {
				if dw != nil {
					dw.Close()
				}
			}()
		}
	}
	f.st.written = true // the data area, where the storage keeps no shadow
	pieces, short := plan(runs, n, dw != nil)
	if short > 0 {
		return fmt.Errorf("the file's clusters hold %d bytes less than its size", short)
	}
	// Two buffers, f.bufs, as large as the largest write: one filled from
	// r while the other is written (one for a file written at once). The
	// reader makes them, when it first needs them: the second as the
	// first is written, and a small first piece (the head of a run) gets a
	// small one.
	type filled struct {
		buf int // the index in f.bufs
		err error
	}
	free, full, stop := make(chan int, 2), make(chan filled, 2), make(chan struct{})
	size := int64(0)
	for _, p := range pieces {
		size = max(size, p.n)
	}
	for i := range min(len(pieces), 2) {
		free <- i
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range pieces {
			var i int
			select {
			case i = <-free:
			case <-stop:
				return
			}
			if int64(len(f.bufs[i])) < p.n {
				need := size
				if p.n < disk.DirectAlign {
					need = p.n
				}
				f.bufs[i] = disk.AlignedBuffer(int(need))
			}
			_, err := io.ReadFull(r, f.bufs[i][:p.n])
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = fmt.Errorf("the reader ended short of the %d bytes it said", n)
			}
			full <- filled{i, err}
			if err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for _, p := range pieces {
		c := <-full
		if c.err != nil {
			return c.err
		}
		buf := f.bufs[c.buf]
		var err error
		direct := p.direct && dw != nil
		if direct {
			if _, err = dw.WriteAt(buf[:p.n], p.off); err != nil {
				// Refused (an unaligned partition, a file system
				// without direct I/O): the page cache from here on.
				dw.Close()
				dw, direct = nil, false
			}
		}
		if !direct {
			_, err = f.dev.WriteAt(buf[:p.n], p.off)
		}
		if err != nil {
			return err
		}
		free <- c.buf
	}
	return nil
}

// piece is one write of writeRuns.
type piece struct {
	off    int64
	n      int64
	direct bool // aligned for a direct write
}

// plan cuts the first n bytes of runs into writes of at most writeChunk,
// aligned for direct writes when direct is set. It returns how many of the
// n bytes the runs do not hold.
func plan(runs []fat12.DiskRange, n int64, direct bool) ([]piece, int64) {
	var out []piece
	for _, run := range runs {
		off, left := int64(run.Offset), min(int64(run.Length), n)
		n -= left
		for left > 0 {
			p := piece{off: off, n: min(left, writeChunk)}
			if direct {
				if head := (disk.DirectAlign - off%disk.DirectAlign) % disk.DirectAlign; head > 0 {
					p.n = min(p.n, head)
				} else if p.n >= disk.DirectAlign {
					p.n, p.direct = p.n/disk.DirectAlign*disk.DirectAlign, true
				}
			}
			out = append(out, p)
			off += p.n
			left -= p.n
		}
	}
	return out, n
}

// writeChunked copies r into the new, empty file w through go-diskfs.
func writeChunked(w filesystem.File, r io.Reader) error {
	buf := make([]byte, writeChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// ReadDir lists a directory's names, sorted; fs.ErrNotExist when it is
// absent.
func (f *Volume) ReadDir(name string) ([]string, error) {
	p := espPath(name)
	if p != "/" {
		if ok, err := f.exists(name); err != nil || !ok {
			if err == nil {
				err = notExist("readdir", name)
			}
			return nil, err
		}
	}
	ents, err := f.readDir(p)
	if err != nil {
		return nil, fmt.Errorf("ESP: reading %s: %w", p, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// Rename renames a file within its directory, replacing the target.
func (f *Volume) Rename(from, to string) error {
	if path.Dir(espPath(from)) != path.Dir(espPath(to)) {
		return fmt.Errorf("ESP: renaming %s to %s: not in the same directory", espPath(from), espPath(to))
	}
	if ok, err := f.exists(from); err != nil || !ok {
		if err == nil {
			err = notExist("rename", from)
		}
		return err
	}
	if ok, err := f.exists(to); err != nil {
		return err
	} else if ok && !strings.EqualFold(espPath(from), espPath(to)) {
		if err := f.remove(espPath(to)); err != nil {
			return fmt.Errorf("ESP: renaming %s over %s: %w", espPath(from), espPath(to), err)
		}
	}
	if err := f.fs.Rename(espPath(from), espPath(to)); err != nil {
		return fmt.Errorf("ESP: renaming %s to %s: %w", espPath(from), espPath(to), err)
	}
	return nil
}

// Remove removes a file; fs.ErrNotExist when it is absent.
func (f *Volume) Remove(name string) error {
	if ok, err := f.exists(name); err != nil || !ok {
		if err == nil {
			err = notExist("remove", name)
		}
		return err
	}
	if err := f.remove(espPath(name)); err != nil {
		return fmt.Errorf("ESP: removing %s: %w", espPath(name), err)
	}
	return nil
}

// Sync makes every change so far durable: it puts right what go-diskfs
// leaves wrong and syncs the device. Most changes leave only the FSInfo
// sector's counts wrong (go-diskfs writes those it read at every
// allocation), set from the FAT as it was last written; after a directory
// was made, or a file removed whose clusters are not known, repairFAT walks
// the whole file system, and the file system is read again when it freed
// clusters. With nothing written since the last Sync, there is nothing to
// do.
func (f *Volume) Sync() error {
	if f.repair {
		r, err := repairFAT(f.st)
		if err != nil {
			return fmt.Errorf("ESP: %w", err)
		}
		if r.reread() {
			if err := f.reload(); err != nil {
				return err
			}
		}
		f.repair, f.st.fsinfoStale = false, false
	} else if f.st.written {
		if err := f.st.fixFSInfo(); err != nil {
			return fmt.Errorf("ESP: %w", err)
		}
	}
	if !f.st.written {
		return nil
	}
	if err := f.st.Sync(); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	return nil
}
