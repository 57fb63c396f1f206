package boot

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
	esp, err := FormatESP(region, espSize)
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

	again, err := OpenESP(region, espSize)
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
	if got := mtools(t, "mtype", img, region.Offset, "::/stagehand/bytes/fffk"); got != string(want["stagehand/bytes/fffk"]) {
		t.Errorf("mtype reads %d bytes, not the %d written", len(got), len(want["stagehand/bytes/fffk"]))
	}
	part := filepath.Join(t.TempDir(), "esp.img")
	b := make([]byte, espSize)
	region.ReadAt(b, 0)
	os.WriteFile(part, b, 0o644)
	out := fsckFAT(t, part)
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
	out := fsckFAT(t, img)
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

// countingDevice counts its syncs.
type countingDevice struct {
	*os.File
	syncs int
}

func (c *countingDevice) Sync() error { c.syncs++; return c.File.Sync() }

// TestFATSyncSyncs: Sync makes the writes durable whether or not the
// repair found anything to put right (it synced only after a repair).
func TestFATSyncSyncs(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "esp.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(100 << 20)
	dev := &countingDevice{File: f}
	esp, err := FormatESP(dev, 100<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i, write := range []bool{false, true, false} {
		if write {
			if err := esp.WriteFile("loader/loader.conf", strings.NewReader("timeout 0\n")); err != nil {
				t.Fatal(err)
			}
		}
		before := dev.syncs
		if err := esp.Sync(); err != nil {
			t.Fatal(err)
		}
		if dev.syncs == before {
			t.Errorf("Sync %d (after a write: %v) did not sync the device", i, write)
		}
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

// TestWriteChanged: of a large write only the blocks that differ reach the
// device, and it then holds exactly what was written.
func TestWriteChanged(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "dev"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := randomBytes(1, 600<<10)
	f.WriteAt(old, 4096)
	dev := &recordingDevice{File: f}
	p := bytes.Clone(old)
	p[0] ^= 1              // first block
	p[100000] ^= 1         // a block in the middle
	p[len(p)-1] ^= 1       // the last block
	p[diffBlock*50+7] ^= 1 // two blocks in a row
	p[diffBlock*51+diffBlock-1] ^= 1
	if err := writeChanged(dev, p, 4096); err != nil {
		t.Fatal(err)
	}
	if dev.written != 5*diffBlock {
		t.Errorf("wrote %d bytes, want the 5 changed blocks (%d)", dev.written, 5*diffBlock)
	}
	got := make([]byte, len(p))
	f.ReadAt(got, 4096)
	if !bytes.Equal(got, p) {
		t.Error("the device does not hold what was written")
	}
	// Small writes, and writes past the end of what the device holds, go through whole.
	dev.written = 0
	if err := writeChanged(dev, old[:1000], 4096); err != nil || dev.written != 1000 {
		t.Errorf("a small write wrote %d bytes (%v), want all 1000", dev.written, err)
	}
	dev.written = 0
	if err := writeChanged(dev, p, 1<<20); err != nil || dev.written != len(p) {
		t.Errorf("a write past the end wrote %d bytes (%v), want all %d", dev.written, err, len(p))
	}
}
