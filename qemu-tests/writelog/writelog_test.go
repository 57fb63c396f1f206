package writelog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// buffer is an io.WriterAt in memory.
type buffer struct{ b []byte }

func (w *buffer) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}
	return copy(w.b[off:], p), nil
}

func sectors(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n*512) }

var sample = []Entry{
	{Sector: 8, NrSectors: 16, Data: sectors(16, 0xab)},
	{Flags: Flush},
	{Sector: 0, NrSectors: 1, Data: sectors(1, 0xcd)},
	{Flags: Mark, Mark: "efivar 1"},
	{Sector: 100, NrSectors: 64, Flags: Discard},
	{Sector: 3, NrSectors: 2, Flags: FUA, Data: sectors(2, 0x11)},
	{Flags: Flush},
}

func encode(t *testing.T, es []Entry) []byte {
	t.Helper()
	var w buffer
	lw, err := NewWriter(&w, 512)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if err := lw.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := lw.Close(); err != nil {
		t.Fatal(err)
	}
	return w.b
}

func TestRoundTrip(t *testing.T) {
	b := encode(t, sample)
	l, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if l.SectorSize != 512 || l.Declared != uint64(len(sample)) || !reflect.DeepEqual(l.Entries, sample) {
		t.Fatalf("read back %d entries (declared %d, sector size %d), want the %d written", len(l.Entries), l.Declared, l.SectorSize, len(sample))
	}
}

// TestTolerant: a count that lags, a log cut in the middle of an entry's
// data, and garbage after the last entry all read up to the last whole
// valid entry.
func TestTolerant(t *testing.T) {
	full := encode(t, sample)
	lagging := bytes.Clone(full)
	binary.LittleEndian.PutUint64(lagging[16:], 2)
	cutData := full[:512+512+16*512-1] // the first write's data is one byte short
	garbage := append(bytes.Clone(full), bytes.Repeat([]byte{0xff}, 512)...)
	zeros := append(bytes.Clone(full), make([]byte, 4096)...)
	for _, tc := range []struct {
		name string
		log  []byte
		want int
	}{
		{"lagging count", lagging, len(sample)},
		{"cut in data", cutData, 0},
		{"cut after a header", full[:512+512+16*512+512], 2},
		{"garbage after", garbage, len(sample)},
		{"zeros after", zeros, len(sample)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Read(bytes.NewReader(tc.log), int64(len(tc.log)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l.Entries, sample[:tc.want]) && !(tc.want == 0 && len(l.Entries) == 0) {
				t.Fatalf("read %d entries, want the first %d", len(l.Entries), tc.want)
			}
		})
	}
}

func TestBadSuperblock(t *testing.T) {
	good := encode(t, sample)
	for _, tc := range []struct {
		name string
		edit func([]byte)
	}{
		{"magic", func(b []byte) { b[0] ^= 1 }},
		{"version", func(b []byte) { binary.LittleEndian.PutUint64(b[8:], 2) }},
		{"sector size", func(b []byte) { binary.LittleEndian.PutUint32(b[24:], 1000) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(good)
			tc.edit(b)
			if _, err := Read(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrFormat) {
				t.Fatalf("Read = %v, want ErrFormat", err)
			}
		})
	}
	if _, err := Read(bytes.NewReader(good[:10]), 10); err == nil {
		t.Fatal("a 10-byte log reads")
	}
}

func TestWriterRefuses(t *testing.T) {
	for _, e := range []Entry{
		{Sector: 1, Data: make([]byte, 100)},
		{Flags: Discard, NrSectors: 1, Data: sectors(1, 1)},
		{},
		{Flags: 16},
		{Flags: Mark, Mark: string(make([]byte, 481))},
		{Sector: 1, Data: sectors(1, 1), Mark: "x"},
	} {
		var w buffer
		lw, _ := NewWriter(&w, 512)
		if err := lw.Append(e); err == nil {
			t.Errorf("Append(%+v) accepted", e)
		}
	}
	if _, err := NewWriter(&buffer{}, 1000); err == nil {
		t.Error("NewWriter accepts sector size 1000")
	}
}

// TestQEMULog reads a log QEMU's blklogwrites wrote (testdata/qemu.log, made
// by testdata/qemu.sh with qemu-io of Debian's QEMU 7.2, a superblock
// update every 2 entries): the writes and flushes it was asked for, in
// order, and the same bytes as Writer's for those entries. qemu-io's flush
// after the second pair of writes logs two FLUSH entries, and its clean
// exit one more after the last write: the VM tests end QEMU with SIGKILL.
func TestQEMULog(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Read(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Sector: 8, NrSectors: 16, Data: sectors(16, 0xab)},
		{Flags: Flush},
		{Sector: 0, NrSectors: 1, Data: sectors(1, 0xcd)},
		{Sector: 3, NrSectors: 2, Data: sectors(2, 0x11)},
		{Flags: Flush},
		{Flags: Flush},
		{Sector: 16, NrSectors: 1, Data: sectors(1, 0x22)},
		{Flags: Flush},
	}
	if !reflect.DeepEqual(l.Entries, want) {
		for _, e := range l.Entries {
			t.Logf("sector %d, %d sectors, flags %#x, %d bytes", e.Sector, e.NrSectors, e.Flags, len(e.Data))
		}
		t.Fatalf("read %d entries from QEMU's log, want %d", len(l.Entries), len(want))
	}
	if l.Declared >= uint64(len(want)) {
		t.Logf("QEMU's superblock declares %d entries", l.Declared)
	}
	mine := encode(t, want)
	if !bytes.Equal(mine[512:], raw[512:len(mine)]) {
		t.Fatal("Writer's entries differ from QEMU's")
	}
}
