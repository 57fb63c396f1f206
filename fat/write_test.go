package fat

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/fat/fattest"
)

func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// unsized hides a reader's Len and Size: WriteFile takes the go-diskfs path.
type unsized struct{ io.Reader }

// TestFATWriteRegion writes files of sizes around the alignment of direct
// writes onto an ESP in a partition of a disk image (a *disk.Region, which
// writes with O_DIRECT where aligned; the data area of go-diskfs's FAT32 is
// not), through every kind of reader, and reads them back through a fresh
// file system, go-diskfs and mtools; fsck.fat finds nothing wrong.
func TestFATWriteRegion(t *testing.T) {
	const espSize = 300 << 20
	img := disktest.Image(t, filepath.Join(t.TempDir(), "disk.img"), []disktest.Part{{Label: "EFI", Size: espSize}})
	d, err := disk.Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	region, err := d.Find("EFI")
	if err != nil {
		t.Fatal(err)
	}
	esp, err := Format(region, espSize, "EFI")
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]byte, 512)
	region.ReadAt(bs, 0)
	dataStart := (int64(binary.LittleEndian.Uint16(bs[14:])) + int64(bs[16])*int64(binary.LittleEndian.Uint32(bs[36:]))) * 512
	t.Logf("data area at %d, %d past a %d-byte boundary", dataStart, dataStart%disk.DirectAlign, disk.DirectAlign)

	want := map[string][]byte{}
	sizes := []int{1, 511, 1024, 3071, 3072, 3073, 4096, 4097, 5<<20 + 1234, 9<<20 + 7}
	for i, n := range sizes {
		data := randomBytes(uint64(i), n)
		for _, r := range []struct {
			kind string
			r    io.Reader
		}{
			{"bytes", bytes.NewReader(data)},
			{"section", func() io.Reader {
				// Partly read already: WriteFile writes what is left.
				padded := append(randomBytes(99, 100), data...)
				sr := io.NewSectionReader(bytes.NewReader(padded), 0, int64(len(padded)))
				io.ReadFull(sr, make([]byte, 100))
				return sr
			}()},
			{"unsized", unsized{iotest.HalfReader(bytes.NewReader(data))}},
		} {
			name := filepath.Join("stagehand", r.kind, strings.Repeat("f", 1+i%3)+string(rune('a'+i)))
			if err := esp.WriteFile(name, r.r); err != nil {
				t.Fatalf("WriteFile %s (%d bytes): %v", name, n, err)
			}
			want[name] = data
		}
	}
	// Replaced by a smaller and a larger file: clusters freed, none lost.
	for name, n := range map[string]int{"stagehand/bytes/fffk": 3<<20 + 5, "stagehand/unsized/ffe": 2<<20 + 77} {
		data := randomBytes(uint64(n), n)
		if err := esp.WriteFile(name, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		want[name] = data
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}

	again, err := Open(region, espSize)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range want {
		got, err := again.ReadFile(name)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("ReadFile %s: %d bytes, %v; want the %d written", name, len(got), err, len(data))
		}
		rc, err := again.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := iotest.TestReader(rc, data); err != nil {
			t.Errorf("Open %s: %v", name, err)
		}
		rc.Close()
	}
	if got := fattest.Mtools(t, "mtype", img, region.Offset, "::/stagehand/bytes/fffk"); got != string(want["stagehand/bytes/fffk"]) {
		t.Errorf("mtype reads %d bytes, not the %d written", len(got), len(want["stagehand/bytes/fffk"]))
	}
	part := filepath.Join(t.TempDir(), "esp.img")
	b := make([]byte, espSize)
	region.ReadAt(b, 0)
	os.WriteFile(part, b, 0o644)
	out := fattest.Fsck(t, part)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
		t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
	}
}

// TestFATReplaceLarge replaces a file by one as large, where the ESP does
// not hold both: the old file's clusters must be free before the new one
// takes them (go-diskfs's Remove keeps them until the next Sync).
func TestFATReplaceLarge(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	var last []byte
	for i, r := range []func(b []byte) io.Reader{
		func(b []byte) io.Reader { return bytes.NewReader(b) },
		func(b []byte) io.Reader { return bytes.NewReader(b) },
		func(b []byte) io.Reader { return unsized{bytes.NewReader(b)} },
		func(b []byte) io.Reader { return bytes.NewReader(b) },
	} {
		last = randomBytes(uint64(i), 60<<20+i)
		if err := esp.WriteFile("stagehand/b/initramfs", r(last)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := esp.ReadFile("stagehand/b/initramfs"); err != nil || !bytes.Equal(got, last) {
		t.Errorf("read back %d bytes, %v; want the %d last written", len(got), err, len(last))
	}
	out := fattest.Fsck(t, img)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
		t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
	}
}

// lying says it holds n bytes, whatever its reader holds.
type lying struct {
	io.Reader
	n int
}

func (l lying) Len() int { return l.n }

func TestFATWriteSizeMismatch(t *testing.T) {
	esp, _ := newESP(t, 100<<20)
	data := randomBytes(1, 100000)
	for _, c := range []struct {
		r    io.Reader
		want string
	}{
		{lying{bytes.NewReader(data), 90000}, "holds more than the 90000 bytes it said"},
		{lying{bytes.NewReader(data), 110000}, "ended short of the 110000 bytes it said"},
		{lying{bytes.NewReader(data), 5 << 30}, "more than a FAT32 file holds"},
		{lying{iotest.ErrReader(io.ErrClosedPipe), 10}, io.ErrClosedPipe.Error()},
	} {
		err := esp.WriteFile("x", c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("WriteFile of %d bytes saying %d: %v, want an error with %q", len(data), c.r.(lying).n, err, c.want)
		}
	}
}

func TestPlan(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name   string
		runs   []fat12.DiskRange
		n      int64
		direct bool
		want   []piece
		short  int64
	}{
		{"buffered", []fat12.DiskRange{{Offset: 3072, Length: 9 * mib}}, 9*mib - 5, false,
			[]piece{{3072, 4 * mib, false}, {3072 + 4*mib, 4 * mib, false}, {3072 + 8*mib, mib - 5, false}}, 0},
		{"direct, unaligned run", []fat12.DiskRange{{Offset: 3072, Length: 9 * mib}}, 9*mib - 5, true,
			[]piece{{3072, 1024, false}, {4096, 4 * mib, true}, {4096 + 4*mib, 4 * mib, true},
				{4096 + 8*mib, mib - 4096, true}, {8*mib + mib, 3072 - 5, false}}, 0},
		{"direct, two runs", []fat12.DiskRange{{Offset: 8192, Length: 8192}, {Offset: 3072 + 65536, Length: 4096}}, 10000, true,
			[]piece{{8192, 8192, true}, {3072 + 65536, 1024, false}, {4096 + 65536, 784, false}}, 0},
		{"runs too short", []fat12.DiskRange{{Offset: 4096, Length: 4096}}, 5000, true,
			[]piece{{4096, 4096, true}}, 904},
	} {
		got, short := plan(c.runs, c.n, c.direct)
		if d := cmp.Diff(c.want, got, cmp.AllowUnexported(piece{})); d != "" || short != c.short {
			t.Errorf("%s: short %d (want %d), pieces (-want, +got):\n%s", c.name, short, c.short, d)
		}
	}
}

// countingDevice counts its syncs and the bytes written to it.
type countingDevice struct {
	*os.File
	syncs, written int
}

func (c *countingDevice) Sync() error { c.syncs++; return c.File.Sync() }

func (c *countingDevice) WriteAt(p []byte, off int64) (int, error) {
	c.written += len(p)
	return c.File.WriteAt(p, off)
}

// TestFATSyncSyncs: Sync makes the writes durable whether or not there
// was anything to put right (it once synced only after a repair), and with
// nothing written since the last Sync it neither writes nor syncs.
func TestFATSyncSyncs(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "esp.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(100 << 20)
	dev := &countingDevice{File: f}
	esp, err := Format(dev, 100<<20, "EFI")
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		name string
		op   func() error
		sync bool
	}{
		{"nothing", func() error { return nil }, false},
		{"a new file", func() error { return esp.WriteFile("loader/loader.conf", strings.NewReader("timeout 0\n")) }, true},
		{"nothing again", func() error { return nil }, false},
		{"reads", func() error { _, err := esp.ReadFile("loader/loader.conf"); return err }, false},
		{"a file replaced", func() error { return esp.WriteFile("loader/loader.conf", strings.NewReader("timeout 1\n")) }, true},
		{"a rename", func() error { return esp.Rename("loader/loader.conf", "loader/x.conf") }, true},
		{"a remove", func() error { return esp.Remove("loader/x.conf") }, true},
	} {
		if err := c.op(); err != nil {
			t.Fatalf("%d %s: %v", i, c.name, err)
		}
		before := dev.syncs
		written := dev.written
		if err := esp.Sync(); err != nil {
			t.Fatal(err)
		}
		if synced := dev.syncs > before; synced != c.sync {
			t.Errorf("Sync after %s synced the device: %v, want %v", c.name, synced, c.sync)
		}
		if !c.sync && dev.written != written {
			t.Errorf("Sync after %s wrote %d bytes", c.name, dev.written-written)
		}
	}
}

// TestFATSyncRepairs: after each change and a Sync, the ESP is as repairFAT
// would leave it (Sync runs it whole only where go-diskfs can have left
// more than the FSInfo counts wrong), and fsck.fat finds nothing.
func TestFATSyncRepairs(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	big, small, other := randomBytes(1, 3<<20+5), randomBytes(2, 5000), randomBytes(3, 3<<20+5)
	want := map[string][]byte{} // what the files hold
	write := func(name string, data []byte, r io.Reader) func() error {
		return func() error { want[name] = data; return esp.WriteFile(name, r) }
	}
	for _, c := range []struct {
		name string
		op   func() error
	}{
		{"a file in new directories", write("stagehand/a/vmlinuz", big, bytes.NewReader(big))},
		{"a file in a new directory in one that is", write("stagehand/b/vmlinuz", small, bytes.NewReader(small))},
		{"replaced by a smaller one", write("stagehand/a/vmlinuz", small, bytes.NewReader(small))},
		{"replaced by a larger one", write("stagehand/a/vmlinuz", big, bytes.NewReader(big))},
		{"replaced by one as large", write("stagehand/a/vmlinuz", other, bytes.NewReader(other))},
		{"replaced through go-diskfs", write("stagehand/a/vmlinuz", small, unsized{bytes.NewReader(small)})},
		{"replaced in another directory", write("stagehand/b/vmlinuz", big, bytes.NewReader(big))},
		{"removed", func() error { delete(want, "stagehand/a/vmlinuz"); return esp.Remove("stagehand/a/vmlinuz") }},
		{"renamed over another", func() error {
			if err := esp.WriteFile("stagehand/b/new", bytes.NewReader(other)); err != nil {
				return err
			}
			want["stagehand/b/vmlinuz"] = other
			return esp.Rename("stagehand/b/new", "stagehand/b/vmlinuz")
		}},
	} {
		if err := c.op(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for name, data := range want {
			if got, err := esp.ReadFile(name); err != nil || !bytes.Equal(got, data) {
				t.Errorf("%s: %s holds %d bytes (%v), not the %d written", c.name, name, len(got), err, len(data))
			}
		}
		if err := esp.Sync(); err != nil {
			t.Fatalf("%s: Sync: %v", c.name, err)
		}
		if r, err := repairFAT(esp.dev); err != nil || r.any() {
			t.Errorf("%s: after Sync, repairFAT put right %+v (%v)", c.name, r, err)
		}
		out := fattest.Fsck(t, img)
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
			t.Errorf("%s: fsck.fat -n said more than its banner and summary:\n%s", c.name, out)
		}
	}
}

// TestFATFreedReused: a cluster of a removed file, which go-diskfs still
// holds as allocated, is written again when the ESP has no other.
func TestFATFreedReused(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	for _, name := range []string{"dir/a", "dir/b", "dir/c"} {
		if err := esp.WriteFile(name, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	free, err := esp.st.freeClusters()
	if err != nil {
		t.Fatal(err)
	}
	cs := esp.st.geo.clusterSize()
	// All the rest.
	if err := esp.WriteFile("fill", bytes.NewReader(make([]byte, free*cs))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dir/a", "dir/b"} {
		if err := esp.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	if free, _ := esp.st.freeClusters(); free != 2 || len(esp.st.freed) != 2 {
		t.Fatalf("%d clusters free, %d of them unknown to go-diskfs; want 2, 2", free, len(esp.st.freed))
	}
	// Two clusters, for a new file: go-diskfs must learn of both.
	want := randomBytes(3, int(cs)+1)
	if err := esp.WriteFile("dir/d", bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := esp.ReadFile("dir/d"); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read back %d bytes, %v", len(got), err)
	}
	out := fattest.Fsck(t, img)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
		t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
	}
}

// recordingDevice records the bytes written to it.
type recordingDevice struct {
	*os.File
	written int
}

func (r *recordingDevice) WriteAt(p []byte, off int64) (int, error) {
	r.written += len(p)
	return r.File.WriteAt(p, off)
}

// TestWriteChanged: of a large write only the blocks that differ from what
// the device holds reach it (read first, then remembered), and it then
// holds exactly what was written.
func TestWriteChanged(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "dev"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := randomBytes(1, 600<<10)
	f.WriteAt(old, 4096)
	dev := &recordingDevice{File: f}
	st := newStorage(dev, 2<<20)
	for i, change := range [][]int{
		{0, 100000, len(old) - 1, diffBlock*50 + 7, diffBlock*51 + diffBlock - 1}, // first, middle, last, two in a row
		{diffBlock * 10, 5},
		{},
	} {
		p := bytes.Clone(old)
		blocks := map[int]bool{}
		for _, c := range change {
			p[c] ^= 1
			blocks[c/diffBlock] = true
		}
		dev.written = 0
		if _, err := st.WriteAt(p, 4096); err != nil {
			t.Fatal(err)
		}
		if dev.written != len(blocks)*diffBlock {
			t.Errorf("write %d wrote %d bytes, want the %d changed blocks (%d)", i, dev.written, len(blocks), len(blocks)*diffBlock)
		}
		got := make([]byte, len(p))
		f.ReadAt(got, 4096)
		if !bytes.Equal(got, p) {
			t.Errorf("write %d: the device does not hold what was written", i)
		}
		old = p
	}
	// A small write overlapping the region is remembered.
	small := randomBytes(2, 100)
	if _, err := st.WriteAt(small, 4096+diffBlock*3+50); err != nil {
		t.Fatal(err)
	}
	copy(old[diffBlock*3+50:], small)
	dev.written = 0
	if _, err := st.WriteAt(old, 4096); err != nil || dev.written != 0 {
		t.Errorf("rewriting what the device holds wrote %d bytes (%v)", dev.written, err)
	}
	// Small writes, and writes past the end of what the device holds, go through whole.
	dev.written = 0
	if _, err := st.WriteAt(old[:1000], 1<<20); err != nil || dev.written != 1000 {
		t.Errorf("a small write wrote %d bytes (%v), want all 1000", dev.written, err)
	}
	dev.written = 0
	if _, err := st.WriteAt(old, 2<<20); err != nil || dev.written != len(old) {
		t.Errorf("a write past the end wrote %d bytes (%v), want all %d", dev.written, err, len(old))
	}
}
