package bootdisk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/fat/fattest"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

type inputs struct{ kernel, initramfs string }

func newInputs(t *testing.T) inputs {
	dir := t.TempDir()
	in := inputs{kernel: boottest.FakeKernel(t, dir, "6.1.0-test", 3*mib+17), initramfs: filepath.Join(dir, "initramfs")}
	os.WriteFile(in.initramfs, bytes.Repeat([]byte("initramfs"), 100_000), 0o644)
	return in
}

func (in inputs) config() Config {
	return Config{Kernel: in.kernel, Initramfs: in.initramfs, Cmdline: "console=ttyS0 quiet", Version: "v1"}
}

// partition returns the region of img's partition labelled label.
func partition(t *testing.T, img, label string) disk.Partition {
	t.Helper()
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(label)
	if err != nil {
		t.Fatal(err)
	}
	return r.Partition
}

// extract copies a partition of img into its own file.
func extract(t *testing.T, img string, p disk.Partition) string {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := filepath.Join(t.TempDir(), p.Label+".img")
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, p.Offset, p.Size)); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInit(t *testing.T) {
	in := newInputs(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	cfg := in.config()
	cfg.Layout = disk.Layout{Size: 1024 * mib, RootSize: 64 * mib}
	info, err := Init(context.Background(), img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != "v1" || info.Kernel != "6.1.0-test" || info.Size != 1024*mib {
		t.Errorf("Info %+v", info)
	}
	var labels []string
	var sizes []int64
	for _, p := range info.Partitions {
		labels, sizes = append(labels, p.Label), append(sizes, p.Size)
	}
	if d := cmp.Diff([]string{"EFI", "META", "STAGE", "ROOT"}, labels); d != "" {
		t.Errorf("labels (-want, +got):\n%s", d)
	}
	if d := cmp.Diff([]int64{disk.DefaultESPSize, mib, 512 * mib, 64 * mib}, sizes); d != "" {
		t.Errorf("sizes (-want, +got):\n%s", d)
	}

	// The GPT: sgdisk finds nothing wrong, and the ESP has type EF00.
	out, err := exec.Command("sgdisk", "-v", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
	out, _ = exec.Command("sgdisk", "-p", img).CombinedOutput()
	if !strings.Contains(string(out), "EF00") {
		t.Errorf("sgdisk -p shows no EF00 partition:\n%s", out)
	}

	// The ESP: fsck.fat finds nothing wrong, mtools sees the files.
	espPart := partition(t, img, "EFI")
	fsck := fattest.Fsck(t, extract(t, img, espPart))
	if strings.Count(strings.TrimSpace(fsck), "\n") != 1 {
		t.Errorf("fsck.fat -n:\n%s", fsck)
	}
	t.Logf("fsck.fat -n on the ESP:\n%s", fsck)
	dir := fattest.Mtools(t, "mdir", img, espPart.Offset, "-/", "-b", "::/")
	for _, want := range []string{"::/EFI/BOOT/BOOTX64.EFI", "::/EFI/systemd/systemd-bootx64.efi", "::/loader/loader.conf",
		"::/loader/entries/stagehand-a.conf", "::/stagehand/a/vmlinuz", "::/stagehand/a/initramfs"} {
		if !strings.Contains(dir, want) {
			t.Errorf("mdir -/ does not list %s:\n%s", want, dir)
		}
	}
	entry := fattest.Mtools(t, "mtype", img, espPart.Offset, "::/loader/entries/stagehand-a.conf")
	wantEntry := "title stagehand slot A (v1)\nversion v1\nsort-key stagehand-999999999\nlinux /stagehand/a/vmlinuz\ninitrd /stagehand/a/initramfs\noptions stagehand.slot=a console=ttyS0 quiet\n"
	if entry != wantEntry {
		t.Errorf("entry:\n%s\nwant:\n%s", entry, wantEntry)
	}
	if got := fattest.Mtools(t, "mtype", img, espPart.Offset, "::/loader/loader.conf"); got != "default stagehand-a[.+]*\ntimeout 0\n" {
		t.Errorf("loader.conf: %q", got)
	}
	efi, _ := os.ReadFile(systemdboot.EFIBinary)
	if got := fattest.Mtools(t, "mtype", img, espPart.Offset, "::/EFI/BOOT/BOOTX64.EFI"); got != string(efi) {
		t.Errorf("BOOTX64.EFI is %d bytes, not systemd-boot's %d", len(got), len(efi))
	}
	kernel, _ := os.ReadFile(in.kernel)
	if got := fattest.Mtools(t, "mtype", img, espPart.Offset, "::/stagehand/a/vmlinuz"); got != string(kernel) {
		t.Errorf("vmlinuz differs from the kernel given")
	}

	// META: idle on slot a, a good with its version, the loader settled on a.
	store, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		t.Fatal(err)
	}
	slots, err := store.Block().Slots()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := &meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA, A: meta.SlotState{State: "good", Version: "v1"}, LoaderDefault: meta.SlotA}
	if d := cmp.Diff(want, slots); d != "" {
		t.Errorf("slots (-want, +got):\n%s", d)
	}
	if ts, _ := store.Block().Transitions(); len(ts) != 1 || ts[0].To != meta.PhaseIdle {
		t.Errorf("transitions %+v", ts)
	}

	// The backend reads it back, installs slot B, counts its tries.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sec := &section{f, espPart.Offset, espPart.Size}
	esp, err := fat.Open(sec, espPart.Size)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sb := systemdboot.New(esp)
	if def, err := sb.Default(ctx); err != nil || def != meta.SlotA {
		t.Errorf("Default = %q, %v", def, err)
	}
	if err := sb.SetDefault(ctx, meta.SlotB); err == nil {
		t.Error("SetDefault(b) without a slot b succeeded")
	}
	img2 := boot.Image{Kernel: strings.NewReader("kernel 2"), Initramfs: strings.NewReader("initramfs 2"), Cmdline: "console=ttyS0 stagehand.slot=a", Version: "v2"}
	if err := sb.InstallSlot(ctx, meta.SlotB, img2); err != nil {
		t.Fatal(err)
	}
	if err := esp.Rename("loader/entries/stagehand-b.conf", "loader/entries/stagehand-b+2-1.conf"); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetDefault(ctx, meta.SlotB); err != nil {
		t.Fatal(err)
	}
	got, err := sb.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantSlots := []boot.SlotEntry{
		{Slot: meta.SlotA, Version: "v1", Cmdline: "stagehand.slot=a console=ttyS0 quiet", Kernel: "/stagehand/a/vmlinuz", Initrd: "/stagehand/a/initramfs", Description: "loader/entries/stagehand-a.conf", SortKey: "stagehand-999999999"},
		{Slot: meta.SlotB, Version: "v2", Cmdline: "stagehand.slot=b console=ttyS0", Kernel: "/stagehand/b/vmlinuz", Initrd: "/stagehand/b/initramfs",
			Counting: true, Left: 2, Done: 1, Description: "loader/entries/stagehand-b+2-1.conf", SortKey: "stagehand-999999998"},
	}
	if d := cmp.Diff(wantSlots, got); d != "" {
		t.Errorf("Slots (-want, +got):\n%s", d)
	}
	if def, err := sb.Default(ctx); err != nil || def != meta.SlotB {
		t.Errorf("Default = %q, %v", def, err)
	}
	// Installing b again replaces the counted entry.
	img2.Kernel, img2.Initramfs = strings.NewReader("kernel 3"), strings.NewReader("initramfs 3")
	if err := sb.InstallSlot(ctx, meta.SlotB, img2); err != nil {
		t.Fatal(err)
	}
	if names, _ := esp.ReadDir("loader/entries"); !cmp.Equal(names, []string{"stagehand-a.conf", "stagehand-b.conf"}) {
		t.Errorf("entries after reinstalling b: %v", names)
	}
	// A trial: b installed with one try, the loader counts it, b becomes
	// the default while counted, is blessed, and a becomes the default
	// again; each step through the FAT and its renames.
	img2.Kernel, img2.Initramfs, img2.Tries = strings.NewReader("kernel 4"), strings.NewReader("initramfs 4"), 1
	if err := sb.InstallSlot(ctx, meta.SlotB, img2); err != nil {
		t.Fatal(err)
	}
	if names, _ := esp.ReadDir("loader/entries"); !cmp.Equal(names, []string{"stagehand-a.conf", "stagehand-b+1.conf"}) {
		t.Errorf("entries after installing b with 1 try: %v", names)
	}
	if err := esp.Rename("loader/entries/stagehand-b+1.conf", "loader/entries/stagehand-b+0-1.conf"); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetDefault(ctx, meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if def, err := sb.Default(ctx); err != nil || def != meta.SlotB {
		t.Errorf("Default with b counted = %q, %v", def, err)
	}
	for i := 0; i < 2; i++ {
		if err := sb.Bless(ctx, meta.SlotB); err != nil {
			t.Fatal(err)
		}
	}
	if err := sb.SetDefault(ctx, meta.SlotA); err != nil {
		t.Fatal(err)
	}
	k, i, e, err := sb.ReadSlot(ctx, meta.SlotB)
	if err != nil || string(k) != "kernel 4" || string(i) != "initramfs 4" || e.Counting || e.Description != "loader/entries/stagehand-b.conf" {
		t.Errorf("ReadSlot(b) = %q, %q, %+v, %v", k, i, e, err)
	}
	fsck = fattest.Fsck(t, extract(t, img, espPart))
	if strings.Count(strings.TrimSpace(fsck), "\n") != 1 {
		t.Errorf("fsck.fat -n after changes:\n%s", fsck)
	}
	t.Logf("fsck.fat -n after a counted install, the loader's rename, Bless and SetDefault:\n%s", fsck)
	if got := fattest.Mtools(t, "mdir", img, espPart.Offset, "-b", "::/loader/entries"); !strings.Contains(got, "stagehand-b.conf") || strings.Contains(got, "+") {
		t.Errorf("mdir sees:\n%s", got)
	}
	if got := fattest.Mtools(t, "mtype", img, espPart.Offset, "::/loader/loader.conf"); got != "default stagehand-a[.+]*\ntimeout 0\n" {
		t.Errorf("loader.conf: %q", got)
	}
}

// section is a partition of an open image file, as a fat.Device.
type section struct {
	f        *os.File
	off, len int64
}

func (s *section) ReadAt(p []byte, off int64) (int, error) {
	return io.NewSectionReader(s.f, s.off, s.len).ReadAt(p, off)
}

func (s *section) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.len {
		return 0, errors.New("past the end")
	}
	return s.f.WriteAt(p, s.off+off)
}

func (s *section) Sync() error { return s.f.Sync() }

func sum(t *testing.T, p string) [32]byte { t.Helper(); return disktest.Sum(t, p) }

// TestInitRefuses: bad input is one error and the disk is unchanged
// (or still absent).
func TestInitRefuses(t *testing.T) {
	in := newInputs(t)
	dir := t.TempDir()
	used := filepath.Join(dir, "used.img")
	os.WriteFile(used, append(make([]byte, 4096), 1), 0o644)
	os.Truncate(used, 1024*mib)
	for _, tc := range []struct {
		name string
		path string
		mod  func(*Config)
		err  string
	}{
		{"no size", "new.img", func(c *Config) { c.Layout.Size = 0 }, "give its size"},
		{"too small", "new.img", func(c *Config) { c.Layout.Size = 700 * mib }, "too small for the layout"},
		{"not MiB", "new.img", func(c *Config) { c.Layout.Size = 1024*mib + 512 }, "not a multiple of 1 MiB"},
		{"small ESP", "new.img", func(c *Config) { c.Layout.ESPSize = 128 * mib }, "below the minimum of 256 MiB"},
		{"small STAGE", "new.img", func(c *Config) { c.Layout.StageSize = 4 * mib }, "less than twice the payload"},
		{"no kernel", "new.img", func(c *Config) { c.Kernel = filepath.Join(dir, "nope") }, "no such file"},
		{"not a kernel", "new.img", func(c *Config) { c.Kernel = in.initramfs }, "not a Linux kernel"},
		{"no initramfs", "new.img", func(c *Config) { c.Initramfs = filepath.Join(dir, "nope") }, "no such file"},
		{"no systemd-boot", "new.img", func(c *Config) { c.LoaderEFI = filepath.Join(dir, "nope.efi") }, "systemd-boot-efi"},
		{"cmdline newline", "new.img", func(c *Config) { c.Cmdline = "a\nb" }, "spans lines"},
		{"in use", "used.img", func(c *Config) {}, "pass --force"},
		{"directory", ".", func(c *Config) {}, "neither a block device nor an image file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.path)
			var before [32]byte
			st, statErr := os.Stat(p)
			if statErr == nil && st.Mode().IsRegular() {
				before = sum(t, p)
			}
			cfg := in.config()
			cfg.Layout.Size = 1024 * mib
			tc.mod(&cfg)
			_, err := Init(context.Background(), p, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Init = %v, want %q", err, tc.err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			_, err = os.Stat(p)
			switch {
			case errors.Is(statErr, fs.ErrNotExist):
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s was created", p)
				}
			case st.Mode().IsRegular():
				if sum(t, p) != before {
					t.Errorf("%s changed", p)
				}
			}
		})
	}
	// With Force, the used file is overwritten.
	cfg := in.config()
	cfg.Force = true
	if _, err := Init(context.Background(), used, cfg); err != nil {
		t.Fatalf("Init --force: %v", err)
	}
	if st, _ := os.Stat(used); st.Size() != 1024*mib {
		t.Errorf("forced image is %d bytes, want its old size", st.Size())
	}
}

// TestInitLoop: a real block device, and a refusal while one of its
// partitions is mounted.
func TestInitLoop(t *testing.T) {
	in := newInputs(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 1024*mib)
	dev := disktest.Loop(t, img)
	cfg := in.config()
	cfg.Layout.RootSize = 64 * mib
	info, err := Init(context.Background(), dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 1024*mib || len(info.Partitions) != 4 {
		t.Errorf("Info %+v", info)
	}
	// This host's kernel has no GPT parser (no CONFIG_EFI_PARTITION), so
	// BLKRRPART finds no partitions here: add the root partition by hand
	// (BLKPG), as the kernel would have.
	root := dev + "p4"
	rp := info.Partitions[3]
	if out, err := exec.Command("addpart", dev, "4", fmt.Sprint(rp.Offset/512), fmt.Sprint(rp.Size/512)).CombinedOutput(); err != nil {
		t.Fatalf("addpart %s 4: %v: %s", dev, err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", root).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", root, err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", root, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", root, err, out)
	}
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()
	before := sum(t, img)
	cfg.Force = true
	_, err = Init(context.Background(), dev, cfg)
	if err == nil || !strings.Contains(err.Error(), "is mounted on "+mnt) {
		t.Fatalf("Init with %s mounted = %v", root, err)
	}
	if sum(t, img) != before {
		t.Error("the disk changed")
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	mounted = false
	if _, err := Init(context.Background(), dev, cfg); err != nil {
		t.Fatalf("Init after umount: %v", err)
	}
	ep := info.Partitions[0]
	if out, err := exec.Command("addpart", dev, "1", fmt.Sprint(ep.Offset/512), fmt.Sprint(ep.Size/512)).CombinedOutput(); err != nil {
		t.Fatalf("addpart %s 1: %v: %s", dev, err, out)
	}
	defer exec.Command("delpart", dev, "1").Run()
	if _, err := Init(context.Background(), dev+"p1", cfg); err == nil || !strings.Contains(err.Error(), "is a partition") {
		t.Errorf("Init on a partition = %v", err)
	}
}
