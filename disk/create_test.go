package disk

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// TestCreateLayouts creates each layout at its MinSize and checks the
// partitions: the ESP, META, STAGE and root keep their numbers, offsets and
// sizes whether or not a BIOS boot partition follows them, and Find finds
// the BIOS boot partition by LabelBIOS exactly when the layout has one.
func TestCreateLayouts(t *testing.T) {
	dir := t.TempDir()
	type part struct {
		label  string
		offset int64 // in MiB
		size   int64 // in MiB
		typ    gpt.Type
	}
	base := []part{
		{LabelESP, 1, MinESPSize / MiB, gpt.EFISystemPartition},
		{LabelMETA, 1 + MinESPSize/MiB, 1, gpt.LinuxFilesystem},
		{LabelSTAGE, 2 + MinESPSize/MiB, 4, gpt.LinuxFilesystem},
	}
	after := int64(6 + MinESPSize/MiB) // the first MiB past STAGE
	root := part{LabelRoot, after, 8, gpt.LinuxRootX86_64}
	for _, tc := range []struct {
		name  string
		l     Layout
		parts []part
	}{
		{"plain", Layout{}, base},
		{"root", Layout{RootSize: 8 * MiB}, append(base[:3:3], root)},
		{"bios", Layout{BIOSBoot: true}, append(base[:3:3], part{LabelBIOS, after, 1, gpt.BIOSBoot})},
		{"root and bios", Layout{RootSize: 8 * MiB, BIOSBoot: true}, append(base[:3:3], root, part{LabelBIOS, after + 8, 1, gpt.BIOSBoot})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.l
			l.ESPSize, l.StageSize = MinESPSize, 4*MiB
			l.Size = l.MinSize()
			last := tc.parts[len(tc.parts)-1]
			if want := (last.offset + last.size + 1) * MiB; l.Size != want {
				t.Fatalf("MinSize = %d MiB, want %d MiB", l.Size/MiB, want/MiB)
			}
			img := filepath.Join(dir, tc.name+".img")
			d, err := Create(context.Background(), img, l)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ps := d.Partitions()
			if len(ps) != len(tc.parts) {
				t.Fatalf("%d partitions, want %d: %+v", len(ps), len(tc.parts), ps)
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			table, err := gpt.Read(f, 512, 512)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tc.parts {
				p := ps[i]
				if p.Index != i+1 || p.Label != want.label || p.Offset != want.offset*MiB || p.Size != want.size*MiB {
					t.Errorf("partition %d: %+v, want %s at %d MiB, %d MiB", i+1, p, want.label, want.offset, want.size)
				}
				if got := table.Partitions[i].Type; got != want.typ {
					t.Errorf("partition %d (%s): type %s, want %s", i+1, want.label, got, want.typ)
				}
			}
			r, err := d.Find(LabelBIOS)
			if !l.BIOSBoot {
				if err == nil || !strings.Contains(err.Error(), "no partition labelled BIOS") {
					t.Fatalf("Find(LabelBIOS) without a BIOS boot partition = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Index != len(tc.parts) || r.Size != BIOSBootSize {
				t.Errorf("Find(LabelBIOS) = %+v", r.Partition)
			}
			if m, err := d.META(); err != nil || m.Index != 2 {
				t.Errorf("META() = %v, %v", m, err)
			}
		})
	}
}

// TestCreateTooSmallForBIOS: the BIOS boot partition counts in MinSize, and
// the error says so.
func TestCreateTooSmallForBIOS(t *testing.T) {
	l := Layout{ESPSize: MinESPSize, StageSize: 4 * MiB, BIOSBoot: true}
	l.Size = l.MinSize() - MiB
	img := filepath.Join(t.TempDir(), "small.img")
	_, err := Create(context.Background(), img, l)
	if err == nil || !strings.Contains(err.Error(), "+ BIOS boot 1 +") {
		t.Fatalf("Create on a disk 1 MiB short = %v, want an error counting the BIOS boot partition", err)
	}
	if _, err := os.Stat(img); err == nil {
		t.Error("the refused image was left behind")
	}
}

// TestCreateUnchanged pins what Create writes for the layouts without a
// BIOS boot partition: the first and last MiB (protective MBR, both GPT
// headers and partition arrays), with the random GUIDs and the CRCs over
// them zeroed, hash as they did before the BIOS boot partition was added
// (the hashes were taken from Create at 1269db5 and are the same since).
func TestCreateUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    Layout
		sum  string
	}{
		{"default", Layout{}, "65a8dba7923ee65acb553092fa87070befb693b6548b43610072671d72339947"},
		{"root", Layout{RootSize: 64 * MiB, Size: 2048 * MiB}, "f44fc794b17e56b427f23a4b90e568324c2a1459d97f67301a77f80cbdf38cb4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.l
			if l.Size == 0 {
				l.Size = l.MinSize()
			}
			img := filepath.Join(t.TempDir(), "d.img")
			d, err := Create(context.Background(), img, l)
			if err != nil {
				t.Fatal(err)
			}
			d.Close()
			if got := normalizedGPTSum(t, img); got != tc.sum {
				t.Errorf("Create wrote a different GPT for %+v: sum %s, want %s", tc.l, got, tc.sum)
			}
		})
	}
}

// normalizedGPTSum hashes the first and last MiB of img with the GPT's
// GUIDs (disk and partitions) and CRCs zeroed, in both copies.
func normalizedGPTSum(t *testing.T, img string) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	// Each MiB holds one header and its partition array: the primary's
	// header in its second sector, the backup's in its last.
	for _, c := range []struct{ at, hdr int64 }{{0, 512}, {st.Size() - MiB, MiB - 512}} {
		b := make([]byte, MiB)
		if _, err := f.ReadAt(b, c.at); err != nil {
			t.Fatal(err)
		}
		hdr := c.hdr
		if string(b[hdr:hdr+8]) != "EFI PART" {
			t.Fatalf("no GPT header at byte %d", c.at+hdr)
		}
		entries := int64(binary.LittleEndian.Uint64(b[hdr+72:]))*512 - c.at
		count := int64(binary.LittleEndian.Uint32(b[hdr+80:]))
		size := int64(binary.LittleEndian.Uint32(b[hdr+84:]))
		zero := func(off, n int64) { clear(b[off : off+n]) }
		zero(hdr+16, 4)  // header CRC
		zero(hdr+56, 16) // disk GUID
		zero(hdr+88, 4)  // partition array CRC
		for i := int64(0); i < count; i++ {
			zero(entries+i*size+16, 16) // unique partition GUID
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestWhole: the whole-disk region reaches the protective MBR and the last
// byte, and nothing past it.
func TestWhole(t *testing.T) {
	l := Layout{ESPSize: MinESPSize, StageSize: 4 * MiB, BIOSBoot: true}
	l.Size = l.MinSize()
	img := filepath.Join(t.TempDir(), "d.img")
	d, err := Create(context.Background(), img, l)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	w := d.Whole()
	if w.Offset != 0 || w.Size != l.Size || w.Index != 0 {
		t.Fatalf("Whole() = %+v", w.Partition)
	}
	if got, want := w.Name(), img+" (whole disk)"; got != want {
		t.Errorf("Name() = %q, want %q", got, want)
	}
	mbr := make([]byte, 512)
	if _, err := w.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa || mbr[0x1be+4] != 0xee {
		t.Errorf("sector 0 read through Whole is not the protective MBR: % x", mbr[0x1be:])
	}
	if _, err := w.WriteAt([]byte{1}, l.Size-1); err != nil {
		t.Errorf("writing the last byte: %v", err)
	}
	if _, err := w.WriteAt([]byte{1, 2}, l.Size-1); err == nil {
		t.Error("a write across the end of the disk succeeded")
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
}
