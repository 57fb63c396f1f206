package disk

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sgdisk runs gdisk's sgdisk: the tests' "other tool". A missing sgdisk
// fails the test.
func sgdisk(t testing.TB, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("sgdisk")
	if err != nil {
		bin = "/usr/sbin/sgdisk"
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("sgdisk is missing (Debian package gdisk): %v", err)
		}
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sgdiskImage makes a sparse image of size bytes with a GPT sgdisk writes
// (-o: a new one), then runs sgdisk with args on it.
func sgdiskImage(t testing.TB, size int64, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	sgdisk(t, append(append([]string{"-o"}, args...), img)...)
	return img
}

// rawEntry reads entry index (from 1) of img's primary GPT, as it lies.
func rawEntry(t testing.TB, img string, index int) []byte {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h := b[512:1024]
	lba, size := binary.LittleEndian.Uint64(h[72:]), binary.LittleEndian.Uint32(h[84:])
	off := int(lba)*512 + (index-1)*int(size)
	return b[off : off+int(size)]
}

// sgdiskVerify fails t unless sgdisk -v finds nothing wrong.
func sgdiskVerify(t testing.TB, img string) {
	t.Helper()
	if out := sgdisk(t, "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
}

func TestGPTAdd(t *testing.T) {
	// Entries sgdisk wrote, one with attributes and a name beyond ASCII
	// (and one outside the BMP, two UTF-16 code units), and the primary
	// entry array moved from LBA 2 to LBA 8 (-j), which go-diskfs would
	// have put back at 2.
	img := sgdiskImage(t, 64*MiB, "-j", "8",
		"-n", "1:2048:+1M", "-t", "1:EF02", "-c", "1:BIOS boot partition",
		"-n", "2:0:+20M", "-t", "2:8300", "-c", "2:rööt 🚀", "-A", "2:set:2",
		"-n", "5:0:+4M", "-t", "5:8200")
	mbr, _ := os.ReadFile(img)
	mbr = bytes.Clone(mbr[:512])
	before := map[int][]byte{1: bytes.Clone(rawEntry(t, img, 1)), 2: bytes.Clone(rawEntry(t, img, 2)), 5: bytes.Clone(rawEntry(t, img, 5))}
	diskGUID := sgdisk(t, "-p", img)
	diskGUID = diskGUID[strings.Index(diskGUID, "Disk identifier"):]
	diskGUID = diskGUID[:strings.Index(diskGUID, "\n")]

	d, err := Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g, err := d.ReadGPT()
	if err != nil {
		t.Fatal(err)
	}
	if g.BackupDiffers {
		t.Error("BackupDiffers on sgdisk's table")
	}
	es := g.Entries()
	if len(es) != 3 || es[0].Type != TypeBIOSBoot || es[1].Label != "rööt 🚀" || es[1].Attributes != 4 || es[2].Index != 5 {
		t.Fatalf("entries %+v", es)
	}
	free := g.Free(MiB)
	if len(free) != 1 || free[0].Offset != 26*MiB || free[0].Size != 64*MiB-MiB-26*MiB {
		t.Fatalf("free %+v", free)
	}
	esp, err := g.Add(LabelESP, TypeESP, 26*MiB, 10*MiB)
	if err != nil {
		t.Fatal(err)
	}
	m, err := g.Add(LabelMETA, TypeLinux, 36*MiB, MiB)
	if err != nil {
		t.Fatal(err)
	}
	if esp.Index != 3 || m.Index != 4 || esp.Offset != 26*MiB || m.Size != MiB {
		t.Errorf("added %+v and %+v", esp, m)
	}
	for _, tc := range []struct {
		name     string
		off, len int64
		err      string
	}{
		{"overlap", 20 * MiB, 10 * MiB, "overlaps partition 2"},
		{"overlap new", 30 * MiB, MiB, "overlaps partition 3"},
		{"past the end", 60 * MiB, 4 * MiB, "outside the usable sectors"},
		{"before the start", 0, MiB, "outside the usable sectors"},
		{"unaligned", 40*MiB + 1, MiB, "not whole 512-byte sectors"},
	} {
		if _, err := g.Add("X", TypeLinux, tc.off, tc.len); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Add = %v, want %q", tc.name, err, tc.err)
		}
	}
	if _, err := g.Add("a name longer than thirty-six code units", TypeLinux, 40*MiB, MiB); err == nil {
		t.Error("Add took a name of 40 code units")
	}
	if err := g.Rename(1, "BIOS"); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteGPT(g); err != nil {
		t.Fatal(err)
	}

	sgdiskVerify(t, img)
	for i, b := range before {
		got := rawEntry(t, img, i)
		if i == 1 {
			// Renamed: only the name changed.
			if !bytes.Equal(got[:56], b[:56]) || entryName(got) != "BIOS" || !bytes.Equal(got[56+8:], make([]byte, 128-64)) {
				t.Errorf("entry 1 after Rename:\n%x\nwas\n%x", got, b)
			}
			continue
		}
		if !bytes.Equal(got, b) {
			t.Errorf("entry %d changed:\n%x\nwas\n%x", i, got, b)
		}
	}
	after, _ := os.ReadFile(img)
	if !bytes.Equal(after[:512], mbr) {
		t.Error("the MBR changed")
	}
	if lba := binary.LittleEndian.Uint64(after[512+72:]); lba != 8 {
		t.Errorf("the primary entry array moved to LBA %d", lba)
	}
	if p := sgdisk(t, "-p", img); !strings.Contains(p, diskGUID) {
		t.Errorf("the disk GUID changed (%s):\n%s", diskGUID, p)
	}
	info := sgdisk(t, "-i", "3", img)
	if !strings.Contains(info, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B") || !strings.Contains(info, "First sector: 53248") || !strings.Contains(info, "'EFI'") {
		t.Errorf("sgdisk -i 3:\n%s", info)
	}
	if !strings.Contains(info, esp.GUID) {
		t.Errorf("sgdisk -i 3 does not show the GUID %s:\n%s", esp.GUID, info)
	}
	// The disk reads the new table back, as go-diskfs sees it.
	r, err := d.META()
	if err != nil || r.Offset != 36*MiB || r.Index != 4 {
		t.Errorf("META() = %+v, %v", r, err)
	}
	// A second disk reads it the same.
	d2, err := Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	g2, err := d2.ReadGPT()
	if err != nil {
		t.Fatal(err)
	}
	if len(g2.Entries()) != 5 || g2.BackupDiffers {
		t.Errorf("read back: %+v (backup differs: %v)", g2.Entries(), g2.BackupDiffers)
	}
}

func TestReadGPTRefuses(t *testing.T) {
	base := func(t *testing.T) string {
		return sgdiskImage(t, 16*MiB, "-n", "1:2048:+1M", "-t", "1:EF02")
	}
	for _, tc := range []struct {
		name string
		mod  func(t *testing.T, img string)
		err  string
	}{
		{"grown disk", func(t *testing.T, img string) { os.Truncate(img, 20*MiB) }, "sgdisk -e"},
		{"no protective MBR", func(t *testing.T, img string) { patch(t, img, 446+4, []byte{0x83}) }, "no protective MBR"},
		{"both entry arrays", func(t *testing.T, img string) {
			patch(t, img, 1024+56, []byte{'x'})
			patch(t, img, 16*MiB-512-32*512+56, []byte{'x'})
		}, "no valid GPT"},
		{"primary array, backup header", func(t *testing.T, img string) {
			patch(t, img, 1024+56, []byte{'x'})
			patch(t, img, 16*MiB-512, []byte{'x'})
		}, "no valid GPT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := base(t)
			tc.mod(t, img)
			d, err := Open(img, false)
			if err == nil {
				defer d.Close()
				_, err = d.ReadGPT()
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ReadGPT = %v, want %q", err, tc.err)
			}
		})
	}

	// A full table: 4 entries (sgdisk --resize-table), all used.
	img := sgdiskImage(t, 16*MiB, "--resize-table=4", "-n", "1:0:+1M", "-n", "2:0:+1M", "-n", "3:0:+1M", "-n", "4:0:+1M")
	d, err := Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g, err := d.ReadGPT()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Add("X", TypeLinux, 8*MiB, MiB); err == nil || !strings.Contains(err.Error(), "entries are all used") {
		t.Errorf("Add to a full table = %v", err)
	}
}

// TestGPTBackupDiffers: a damaged backup is reported and written anew
// from the primary.
func TestGPTBackupDiffers(t *testing.T) {
	img := sgdiskImage(t, 16*MiB, "-n", "1:2048:+1M")
	patch(t, img, 16*MiB-512+100, []byte{1}) // the backup header, past its CRC'd 92 bytes: still valid
	patch(t, img, 16*MiB-512-32*512, []byte{1, 2, 3})
	d, err := Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g, err := d.ReadGPT()
	if err != nil {
		t.Fatal(err)
	}
	if !g.BackupDiffers {
		t.Fatal("a backup entry array of other bytes is not reported")
	}
	if _, err := g.Add(LabelMETA, TypeLinux, 4*MiB, MiB); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteGPT(g); err != nil {
		t.Fatal(err)
	}
	sgdiskVerify(t, img)
}

// TestGPTFromBackup: a primary GPT cut short while it was written (its
// entry array new, its header old) is read from the backup, as firmware
// reads it, and written anew.
func TestGPTFromBackup(t *testing.T) {
	img := sgdiskImage(t, 16*MiB, "-j", "4", "-n", "1:2048:+1M", "-c", "1:one")
	patch(t, img, 4*512+56, []byte{'x'}) // the name of entry 1, in the primary array only
	d, err := Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g, err := d.ReadGPT()
	if err != nil {
		t.Fatal(err)
	}
	if !g.FromBackup || g.BackupDiffers || len(g.Entries()) != 1 || g.Entries()[0].Label != "one" {
		t.Fatalf("FromBackup %v, BackupDiffers %v, entries %+v", g.FromBackup, g.BackupDiffers, g.Entries())
	}
	if err := d.WriteGPT(g); err != nil {
		t.Fatal(err)
	}
	sgdiskVerify(t, img)
	if h, _ := os.ReadFile(img); binary.LittleEndian.Uint64(h[512+72:]) != 4 {
		t.Error("the primary entry array moved")
	}
	if !strings.Contains(sgdisk(t, "-i", "1", img), "'one'") {
		t.Error("partition 1 lost its name")
	}
}

func TestMBRKinds(t *testing.T) {
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xaa
	if HasGPTMBR(mbr) || HasMBRPartitions(mbr) {
		t.Error("an empty MBR has partitions")
	}
	mbr[446+4] = 0x83
	binary.LittleEndian.PutUint32(mbr[446+12:], 2048)
	if HasGPTMBR(mbr) || !HasMBRPartitions(mbr) {
		t.Error("an MBR partition is not seen")
	}
	mbr[446+16+4] = 0xee
	if !HasGPTMBR(mbr) || HasMBRPartitions(mbr) {
		t.Error("a hybrid MBR is not GPT's")
	}
}

func patch(t testing.TB, img string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
