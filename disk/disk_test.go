package disk

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

const MiB = disktest.MiB

func TestFindMETA(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		parts []disktest.Part
		err   string // "" for success
	}{
		{"layout", disktest.Layout(), ""},
		{"meta first", []disktest.Part{{Label: "META", Size: MiB}, {Label: "EFI", Size: 260 * MiB}}, ""},
		{"2 MiB META", []disktest.Part{{Label: "EFI", Size: 260 * MiB}, {Label: "META", Size: 2 * MiB}}, "labelled META but is 2097152 bytes"},
		{"512 KiB META", []disktest.Part{{Label: "META", Size: MiB / 2}}, "labelled META but is 524288 bytes"},
		{"no META", []disktest.Part{{Label: "EFI", Size: 260 * MiB}}, "has no partition labelled META"},
		{"two METAs", []disktest.Part{{Label: "META", Size: MiB}, {Label: "META", Size: MiB}}, "2 partitions labelled META"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := disktest.Image(t, filepath.Join(dir, tc.name+".img"), tc.parts)
			d, err := Open(img, false)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			r, err := d.META()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), img) {
					t.Fatalf("META() = %v, want an error naming %s and saying %q", err, img, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Size != meta.PartitionSize || r.Label != "META" {
				t.Errorf("META region %+v", r.Partition)
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	zeros := filepath.Join(dir, "zeros.img")
	os.WriteFile(zeros, make([]byte, 4*MiB), 0o600)
	trunc := disktest.Image(t, filepath.Join(dir, "trunc.img"), disktest.Layout())
	os.Truncate(trunc, 200*MiB) // the primary GPT survives; STAGE and META do not
	for _, tc := range []struct {
		name, path, err string
	}{
		{"missing", filepath.Join(dir, "nope.img"), "no such file"},
		{"no GPT", zeros, "has no valid GPT"},
		{"directory", dir, "neither a block device nor an image file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.path, false)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Open = %v, want %q", err, tc.err)
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		d, err := Open(trunc, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if _, err := d.META(); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("META() on a truncated image = %v", err)
		}
	})
	if !errors.Is(func() error { _, err := Open(zeros, false); return err }(), ErrNotStagehand) {
		t.Error("a disk without GPT is not ErrNotStagehand")
	}
}

func TestRegionBounds(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	d, err := Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, _ := d.META()
	if _, err := r.WriteAt([]byte{1, 2}, meta.PartitionSize-1); err == nil {
		t.Error("write across the end of META succeeded")
	}
	buf := make([]byte, 10)
	if n, err := r.ReadAt(buf, meta.PartitionSize-4); n != 4 || err == nil {
		t.Errorf("read across the end: n=%d err=%v", n, err)
	}
}

// TestStoreOnImage writes META through a region and reads the bytes back
// from the image file at the partition's offset.
func TestStoreOnImage(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	commitAndCheck(t, img, img)
}

// TestStoreOnLoopDevice does the same through a real block device.
func TestStoreOnLoopDevice(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	dev := disktest.Loop(t, img)
	d, err := Open(dev, false)
	if err != nil {
		t.Fatal(err)
	}
	if !d.IsBlockDevice() {
		t.Errorf("%s not seen as a block device", dev)
	}
	d.Close()
	commitAndCheck(t, dev, img)
}

func commitAndCheck(t *testing.T, path, img string) {
	t.Helper()
	d, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Lock(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	r, err := d.META()
	if err != nil {
		t.Fatal(err)
	}
	s, err := meta.Load(r, r.Name())
	if err != nil {
		t.Fatal(err)
	}
	b := s.Block()
	b.Set(meta.TagTalosStagedImageRef, []byte("127.0.0.1:5000/os:v2"))
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		off := r.Offset + int64(i)*meta.BlockSize
		got, err := meta.Unmarshal(raw[off : off+meta.BlockSize])
		if err != nil {
			t.Fatalf("copy %d in the image file: %v", i+1, err)
		}
		if v, _ := got.Get(meta.TagTalosStagedImageRef); string(v) != "127.0.0.1:5000/os:v2" {
			t.Errorf("copy %d holds %q", i+1, v)
		}
	}
}

func TestLock(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	open := func() *Disk {
		d, err := Open(img, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a, b := open(), open()
	if err := a.Lock(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := b.Lock(ctx, true)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), img) {
		t.Fatalf("second exclusive lock = %v, want ErrLocked naming the disk", err)
	}
	// A waiter gets the lock once the holder lets go.
	done := make(chan error)
	go func() { done <- b.Lock(context.Background(), false) }()
	time.Sleep(100 * time.Millisecond)
	a.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("waiting lock: %v", err)
	}
	// Readers share.
	if err := open().Lock(context.Background(), false); err != nil {
		t.Errorf("second shared lock: %v", err)
	}
}

func TestBootedPartUUID(t *testing.T) {
	enc := func(s string) []byte {
		b := []byte{7, 0, 0, 0}
		for _, r := range s {
			b = append(b, byte(r), 0)
		}
		return append(b, 0, 0)
	}
	const grubUUID = "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"
	for _, tc := range []struct {
		name   string
		params string
		raw    []byte // the efivarfs file; nil for none
		noVars bool   // no UEFI at all
		want   string
		ok     bool
	}{
		{"systemd-boot", "", enc("6A7F3B0E-91C2-4E1B-9C55-0D3F1A2B4C5D"), false, "6a7f3b0e-91c2-4e1b-9c55-0d3f1a2b4c5d", true},
		{"no terminator", "", enc("6A7F3B0E-91C2-4E1B-9C55-0D3F1A2B4C5D")[:4+72], false, "6a7f3b0e-91c2-4e1b-9c55-0d3f1a2b4c5d", true},
		{"empty", "", []byte{7, 0, 0, 0}, false, "", false},
		{"odd", "", []byte{7, 0, 0, 0, 1}, false, "", false},
		{"not a guid", "", enc("hello"), false, "", false},
		{"unset", "", nil, false, "", false},
		{"GRUB on UEFI: the parameter wins", "ro " + PartUUIDParam + "=" + grubUUID, enc("6A7F3B0E-91C2-4E1B-9C55-0D3F1A2B4C5D"), false, strings.ToLower(grubUUID), true},
		{"GRUB on a BIOS", PartUUIDParam + "=" + grubUUID + " quiet", nil, true, strings.ToLower(grubUUID), true},
		{"BIOS, no parameter", "quiet", nil, true, "", false},
		{"parameter not a guid", PartUUIDParam + "=", nil, true, "", false},
	} {
		dir := t.TempDir()
		if tc.raw != nil {
			os.WriteFile(filepath.Join(dir, "LoaderDevicePartUUID-"+LoaderVendorGUID), tc.raw, 0o644)
		}
		var vars efivar.Store = efivar.Dir(dir)
		if tc.noVars {
			vars = nil
		}
		got, err := BootedPartUUID(tc.params, vars)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%s: got %q, %v", tc.name, got, err)
		}
		if err != nil && (!errors.Is(err, ErrBootDiskUnknown) || !strings.Contains(err.Error(), "pass --disk")) {
			t.Errorf("%s: error %v is not ErrBootDiskUnknown with a hint", tc.name, err)
		}
	}
}

func TestFindByPartUUID(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	dev := disktest.Loop(t, img)
	d, err := Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	esp, _ := d.Find(LabelESP)
	d.Close()
	got, err := FindByPartUUID("/sys/block", "/dev", strings.ToLower(esp.GUID))
	if err != nil || got != dev {
		t.Fatalf("FindByPartUUID = %q, %v; want %s", got, err, dev)
	}
	if _, err := FindByPartUUID("/sys/block", "/dev", "00000000-0000-0000-0000-000000000001"); !errors.Is(err, ErrBootDiskUnknown) {
		t.Errorf("unknown GUID: %v", err)
	}
}

// TestMountPoint mounts a loop device's ESP and finds it, and nothing for
// the partitions not mounted, nor for an image file.
func TestMountPoint(t *testing.T) {
	img := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), disktest.Layout())
	dev := disktest.Loop(t, img)
	d, err := Open(dev, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	esp, err := d.Find(LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	stagePart, err := d.Find(LabelSTAGE)
	if err != nil {
		t.Fatal(err)
	}
	// losetup --partscan makes no partition devices on some kernels
	// (this CI's among them); partx adds them.
	if b, err := exec.Command("partx", "--add", dev).CombinedOutput(); err != nil {
		t.Fatalf("partx --add %s: %v: %s", dev, err, b)
	}
	defer exec.Command("partx", "--delete", dev).Run()
	part := dev + "p" + strconv.Itoa(esp.Index)
	// ext4, not vfat: any file system does, and some CI kernels lack vfat.
	if b, err := exec.Command("mkfs.ext4", "-q", part).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", part, err, b)
	}
	dir := filepath.Join(t.TempDir(), "esp dir") // a space, escaped in mountinfo
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(part, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mounting %s: %v", part, err)
	}
	defer unix.Unmount(dir, 0)
	for _, tc := range []struct {
		index int
		want  string
	}{{esp.Index, dir}, {stagePart.Index, ""}, {99, ""}} {
		if got, err := d.MountPoint(tc.index); err != nil || got != tc.want {
			t.Errorf("MountPoint(%d) = %q, %v; want %q", tc.index, got, err, tc.want)
		}
	}
	fd, err := Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if got, err := fd.MountPoint(esp.Index); err != nil || got != "" {
		t.Errorf("image file: MountPoint = %q, %v; want \"\"", got, err)
	}
}
