package writelog

import (
	"bytes"
	"testing"
)

// FuzzRead feeds logs to Read: it must not panic, and the entries it
// accepts must write back (Writer) to a log that reads as the same entries.
func FuzzRead(f *testing.F) {
	var w buffer
	lw, _ := NewWriter(&w, 512)
	for _, e := range sample {
		lw.Append(e)
	}
	lw.Close()
	f.Add(w.b)
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Read(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		var out buffer
		lw, err := NewWriter(&out, l.SectorSize)
		if err != nil {
			t.Fatalf("a log with sector size %d reads but cannot be written: %v", l.SectorSize, err)
		}
		for _, e := range l.Entries {
			if e.Flags&(Mark|Discard) != 0 || len(e.Data) == 0 {
				e.Data = nil
			}
			if err := lw.Append(e); err != nil {
				t.Fatalf("entry %+v read but cannot be written: %v", e, err)
			}
		}
		lw.Close()
		again, err := Read(bytes.NewReader(out.b), int64(len(out.b)))
		if err != nil {
			t.Fatal(err)
		}
		if len(again.Entries) != len(l.Entries) {
			t.Fatalf("%d entries read, %d after writing them back", len(l.Entries), len(again.Entries))
		}
		for i := range again.Entries {
			a, b := l.Entries[i], again.Entries[i]
			if a.Sector != b.Sector || a.NrSectors != b.NrSectors || a.Flags != b.Flags || a.Mark != b.Mark || !bytes.Equal(a.Data, b.Data) {
				t.Fatalf("entry %d: %+v read, %+v after writing it back", i, a, b)
			}
		}
	})
}
