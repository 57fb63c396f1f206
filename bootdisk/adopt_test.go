package bootdisk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/fat/fattest"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
	"github.com/stagehand-dev/stagehand/grub/install"
	"github.com/stagehand-dev/stagehand/meta"
)

// The adopt tests make disks "by another tool": sgdisk (Debian's gdisk)
// writes the GPT, mkfs.ext4 and mkfs.fat the file systems, mtools the
// ESP's files. A missing tool fails the test.

func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return filepath.Join(dir, name)
			}
		}
		t.Fatalf("%s is missing (the adopt tests make disks with gdisk, e2fsprogs, dosfstools and mtools): %v", name, err)
	}
	return p
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sgdiskImage makes a sparse image of size bytes and a new GPT on it
// with sgdisk args.
func sgdiskImage(t testing.TB, size int64, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	run(t, "sgdisk", append(append([]string{"-o"}, args...), img)...)
	return img
}

// writeAt puts b at off in img.
func writeAt(t testing.TB, img string, off int64, b []byte) {
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

func readAt(t testing.TB, img string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// regionSum is the SHA-256 of n bytes of img from off.
func regionSum(t testing.TB, img string, off, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// imageSum is the SHA-256 of an image's data and where it lies: the
// extents SEEK_DATA finds (an image here is mostly holes), each with its
// offset. Writing anything, zeros into a hole too, changes it.
func imageSum(t testing.TB, img string) [32]byte {
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
	fmt.Fprintf(h, "size %d\n", st.Size())
	fd := int(f.Fd())
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA: %v", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE: %v", err)
		}
		fmt.Fprintf(h, "data %d %d\n", data, hole-data)
		if _, err := io.Copy(h, io.NewSectionReader(f, data, hole-data)); err != nil {
			t.Fatal(err)
		}
		off = hole
	}
	return [32]byte(h.Sum(nil))
}

// mkfsFAT32 formats size bytes at off of img FAT32 with mkfs.fat (in a
// file of its own, copied in) and copies files onto it with mtools.
func mkfsFAT32(t testing.TB, img string, off, size int64, files map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	vol := filepath.Join(dir, "esp.img")
	os.WriteFile(vol, nil, 0o644)
	os.Truncate(vol, size)
	run(t, "mkfs.fat", "-F", "32", "-n", "ESP", vol)
	for name, b := range files {
		src := filepath.Join(dir, "f")
		os.WriteFile(src, b, 0o644)
		parts := strings.Split(filepath.Dir(name), "/")
		for i := range parts {
			// An existing directory is an error mmd reports, and mcopy
			// below fails if the directory is missing.
			exec.Command(tool(t, "mmd"), "-i", vol, "::/"+strings.Join(parts[:i+1], "/")).Run()
		}
		run(t, "mcopy", "-o", "-i", vol, src, "::/"+name)
	}
	b, err := os.ReadFile(vol)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, img, off, b)
}

// gptEntry is a partition as sgdisk -i tells it: what adopt must keep.
func gptEntry(t testing.TB, img string, n int) string {
	t.Helper()
	return run(t, "sgdisk", "-i", fmt.Sprint(n), img)
}

// rawEntry reads entry n (from 1) of img's primary GPT, as it lies.
func rawEntry(t testing.TB, img string, n int) []byte {
	t.Helper()
	h := readAt(t, img, 512, 512)
	lba, size := binary.LittleEndian.Uint64(h[72:]), binary.LittleEndian.Uint32(h[84:])
	return readAt(t, img, int64(lba)*512+int64(n-1)*int64(size), int64(size))
}

func adoptConfig(in inputs, bl string) AdoptConfig {
	return AdoptConfig{Bootloader: bl, Kernel: in.kernel, Initramfs: in.initramfs, Cmdline: "console=ttyS0 root=/dev/vda2", Version: "v1"}
}

// debianBIOS is a disk as Debian's installer leaves a BIOS machine: a
// 1 MiB BIOS boot partition holding grub-install's core image (here
// random bytes), an ext4 root, GRUB's boot.img in the MBR, and free
// space after the root.
func debianBIOS(t testing.TB, size int64) (img string, root disk.Partition) {
	t.Helper()
	img = sgdiskImage(t, size, "-n", "1:2048:+1M", "-t", "1:EF02", "-n", "2:0:+200M", "-t", "2:8300", "-c", "2:debian-root")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "root", "-E", fmt.Sprintf("offset=%d", 2*mib), img, "200M")
	core := make([]byte, 60<<10)
	rand.Read(core)
	writeAt(t, img, mib, core)
	bootImg, err := os.ReadFile("/usr/lib/grub/i386-pc/boot.img")
	if err != nil {
		t.Fatalf("GRUB's boot.img: %v (Debian package grub-pc-bin)", err)
	}
	writeAt(t, img, 0, bootImg[:440])
	return img, disk.Partition{Index: 2, Offset: 2 * mib, Size: 200 * mib}
}

// readESPFile reads a file of the ESP, partition esp of img.
func readESPFile(t testing.TB, img string, esp disk.Partition, name string) []byte {
	t.Helper()
	return []byte(fattest.Mtools(t, "mtype", img, esp.Offset, "::/"+name))
}

// checkMETA checks that img's META records slot a good and active, with
// the adopt's transition.
func checkMETA(t *testing.T, img, version string) *meta.Store {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	slots, err := store.Block().Slots()
	if err != nil {
		t.Fatal(err)
	}
	want := &meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA, A: meta.SlotState{State: "good", Version: version}, LoaderDefault: meta.SlotA}
	if d := cmp.Diff(want, slots); d != "" {
		t.Errorf("slots (-want, +got):\n%s", d)
	}
	ts, _ := store.Block().Transitions()
	if len(ts) == 0 || ts[len(ts)-1].Reason != "adopted: disk converted by stager disk adopt, slot a ("+version+")" {
		t.Errorf("transitions %+v", ts)
	}
	return store
}

// checkESP checks the ESP's file system and stagehand's files on it.
func checkGRUBFiles(t *testing.T, img string, esp disk.Partition, in inputs) {
	t.Helper()
	fsck := fattest.Fsck(t, extract(t, img, esp))
	if strings.Count(strings.TrimSpace(fsck), "\n") != 1 {
		t.Errorf("fsck.fat -n:\n%s", fsck)
	}
	dir := fattest.Mtools(t, "mdir", img, esp.Offset, "-/", "-b", "::/")
	for _, want := range []string{"::/grub/grub.cfg", "::/grub/grubenv", "::/stagehand/a/vmlinuz", "::/stagehand/a/initrd", "::/stagehand/a/slot.cfg"} {
		if !strings.Contains(dir, want) {
			t.Errorf("mdir -/ does not list %s:\n%s", want, dir)
		}
	}
	kernel, _ := os.ReadFile(in.kernel)
	if !bytes.Equal(readESPFile(t, img, esp, "stagehand/a/vmlinuz"), kernel) {
		t.Error("stagehand/a/vmlinuz is not the kernel given")
	}
	if got, cfg := readESPFile(t, img, esp, grub.CfgPath), stagehandCfg(t); !bytes.Equal(got, cfg) {
		t.Error("grub/grub.cfg is not the stagehand script")
	}
	slot := string(readESPFile(t, img, esp, "stagehand/a/slot.cfg"))
	if !strings.Contains(slot, "console=ttyS0 root=/dev/vda2") || !strings.Contains(slot, "stagehand_ready='a'") {
		t.Errorf("slot.cfg:\n%s", slot)
	}
	env := string(readESPFile(t, img, esp, grub.EnvPath))
	if !strings.Contains(env, grub.VarSlot+"=a") {
		t.Errorf("grubenv does not make slot a the default:\n%s", env)
	}
}

// stagehandCfg is the grub.cfg grub.Loader writes.
func stagehandCfg(t *testing.T) []byte {
	t.Helper()
	vol := grubtest.FormatFAT(t, filepath.Join(t.TempDir(), "esp.img"), 260*mib)
	if err := grub.New(vol, grub.WithCmdline("")).InstallLoader(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := vol.ReadFile(grub.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAdoptDebianBIOS(t *testing.T) {
	in := newInputs(t)
	img, root := debianBIOS(t, 1100*mib)
	rootSum := regionSum(t, img, root.Offset, root.Size)
	before := map[int]string{1: gptEntry(t, img, 1), 2: gptEntry(t, img, 2)}
	raw := map[int][]byte{1: rawEntry(t, img, 1), 2: rawEntry(t, img, 2)}
	mbrTable := readAt(t, img, 0x1b8, 0x200-0x1b8)
	sum0 := imageSum(t, img)

	info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS))
	if err != nil {
		t.Fatal(err)
	}
	if imageSum(t, img) == sum0 {
		t.Error("imageSum does not see the adopt's writes") // the refusals' check would be blind
	}
	t.Logf("plan:\n%s", strings.Join(info.Steps, "\n"))
	if info.Version != "v1" || info.Kernel != "6.1.0-test" || info.ESP.Index != 3 || info.EFIBootEntry != "" {
		t.Errorf("info %+v", info)
	}

	// The old partitions, byte for byte; the root's file system too.
	for n, s := range before {
		if got := gptEntry(t, img, n); got != s {
			t.Errorf("partition %d changed:\n%s\nwas\n%s", n, got, s)
		}
		if got := rawEntry(t, img, n); !bytes.Equal(got, raw[n]) {
			t.Errorf("partition %d's GPT entry changed", n)
		}
	}
	if regionSum(t, img, root.Offset, root.Size) != rootSum {
		t.Error("the root partition changed")
	}
	run(t, "e2fsck", "-n", "-f", fmt.Sprintf("%s?offset=%d", img, root.Offset))

	// The added partitions: after the root, 1 MiB aligned, in order.
	var got []string
	for _, p := range info.Partitions {
		got = append(got, fmt.Sprintf("%d %s %d+%d", p.Index, p.Label, p.Offset/mib, p.Size/mib))
	}
	want := []string{"1  1+1", "2 debian-root 2+200", "3 EFI 202+300", "4 META 502+1", "5 STAGE 503+512"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("partitions (-want, +got):\n%s", d)
	}
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	if out := gptEntry(t, img, 3); !strings.Contains(out, "EFI system partition") {
		t.Errorf("partition 3:\n%s", out)
	}
	esp := info.Partitions[2]
	checkGRUBFiles(t, img, esp, in)

	// The MBR: GRUB's boot code loading the core image from partition 1,
	// the partition table and disk signature as they were.
	bootImg, _ := install.ReadBootImage("")
	mbr := readAt(t, img, 0, 512)
	if ks := binary.LittleEndian.Uint64(mbr[0x5c:]); ks != 2048 {
		t.Errorf("the MBR's kernel_sector is %d, not partition 1's first sector 2048", ks)
	}
	if !bytes.Equal(mbr[0x68:0x1b8], bootImg[0x68:0x1b8]) {
		t.Error("the MBR's code is not boot.img's")
	}
	if !bytes.Equal(mbr[0x1b8:], mbrTable) {
		t.Error("the MBR's partition table or disk signature changed")
	}
	// The core image: diskboot.img's sector first, then the rest.
	diskboot, _ := os.ReadFile("/usr/lib/grub/i386-pc/diskboot.img")
	if core := readAt(t, img, mib, 512); !bytes.Equal(core[:0x1e8], diskboot[:0x1e8]) {
		t.Error("partition 1 does not start with GRUB's diskboot.img")
	}

	checkMETA(t, img, "v1")

	// Adopting it again is refused, and changes nothing.
	sum := imageSum(t, img)
	if _, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS)); err == nil || !strings.Contains(err.Error(), "already a stagehand disk") {
		t.Errorf("second adopt = %v", err)
	}
	if imageSum(t, img) != sum {
		t.Error("the refused second adopt changed the disk")
	}
}

// TestAdoptUEFI: a disk with an ESP holding another loader's files, a
// root and free space: the ESP is reused, its files kept, GRUB put at
// the removable path.
func TestAdoptUEFI(t *testing.T) {
	in := newInputs(t)
	files := map[string][]byte{
		"EFI/debian/grubx64.efi": bytes.Repeat([]byte("debian grub "), 50_000),
		"EFI/debian/grub.cfg":    []byte("search.fs_uuid 1234 root\nconfigfile ($root)/boot/grub/grub.cfg\n"),
		"EFI/BOOT/BOOTX64.EFI":   []byte("a shim, say"),
	}
	img := sgdiskImage(t, 1200*mib, "-n", "1:2048:+400M", "-t", "1:EF00", "-c", "1:EFI System Partition",
		"-n", "2:0:+100M", "-t", "2:8304", "-c", "2:root")
	mkfsFAT32(t, img, mib, 400*mib, files)
	rootSum := regionSum(t, img, 401*mib, 100*mib)
	espBefore := gptEntry(t, img, 1)

	info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBEFI))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n%s", strings.Join(info.Steps, "\n"))
	if want := `efibootmgr -c -d DISK -p 1 -L stagehand -l '\EFI\BOOT\BOOTX64.EFI'`; info.EFIBootEntry != want {
		t.Errorf("EFIBootEntry = %q, want %q", info.EFIBootEntry, want)
	}
	var got []string
	for _, p := range info.Partitions {
		got = append(got, fmt.Sprintf("%d %s %d+%d", p.Index, p.Label, p.Offset/mib, p.Size/mib))
	}
	if d := cmp.Diff([]string{"1 EFI 1+400", "2 root 401+100", "3 META 501+1", "4 STAGE 502+512"}, got); d != "" {
		t.Errorf("partitions (-want, +got):\n%s", d)
	}
	// The ESP's entry: renamed, nothing else changed.
	espAfter := gptEntry(t, img, 1)
	if strings.Replace(espBefore, "'EFI System Partition'", "'EFI'", 1) != espAfter {
		t.Errorf("the ESP's entry:\n%s\nwas\n%s", espAfter, espBefore)
	}
	if regionSum(t, img, 401*mib, 100*mib) != rootSum {
		t.Error("the root partition changed")
	}
	esp := info.Partitions[0]
	checkGRUBFiles(t, img, esp, in)
	for name, b := range files {
		if name == install.EFIRemovablePath {
			continue
		}
		if got := readESPFile(t, img, esp, name); !bytes.Equal(got, b) {
			t.Errorf("%s changed", name)
		}
	}
	grubEFI, err := install.BuildImage(context.Background(), install.ImageSpec{Platform: install.PlatformEFI})
	if err != nil {
		t.Fatal(err)
	}
	if got := readESPFile(t, img, esp, install.EFIRemovablePath); !bytes.Equal(got, grubEFI) {
		t.Errorf("%s is not GRUB's image (%d bytes, GRUB's %d)", install.EFIRemovablePath, len(got), len(grubEFI))
	}
	if !bytes.Equal(readAt(t, img, 0, 440), make([]byte, 440)) {
		t.Error("grub-efi wrote boot code into the MBR")
	}
	checkMETA(t, img, "v1")
}

// TestAdoptCloudImage: Debian's cloud image layout, root first, BIOS boot
// partition 14 and ESP 15 at the start: grub-bios reuses both, and the
// core image's prefix names partition 15.
func TestAdoptCloudImage(t *testing.T) {
	in := newInputs(t)
	img := sgdiskImage(t, 1200*mib,
		"-n", "14:2048:+3M", "-t", "14:EF02",
		"-n", "15:0:+300M", "-t", "15:EF00",
		"-n", "1:0:+200M", "-t", "1:8304")
	mkfsFAT32(t, img, 4*mib, 300*mib, map[string][]byte{"EFI/debian/grubx64.efi": []byte("grub")})
	info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n%s", strings.Join(info.Steps, "\n"))
	if info.ESP.Index != 15 {
		t.Errorf("ESP %+v", info.ESP)
	}
	if !strings.Contains(strings.Join(info.Steps, "\n"), "prefix (,gpt15)/grub") {
		t.Errorf("the plan names no prefix (,gpt15)/grub:\n%s", strings.Join(info.Steps, "\n"))
	}
	if ks := binary.LittleEndian.Uint64(readAt(t, img, 0x5c, 8)); ks != 2048 {
		t.Errorf("kernel_sector %d, want partition 14's 2048", ks)
	}
	checkGRUBFiles(t, img, info.ESP, in)
	checkMETA(t, img, "v1")
}

// TestAdoptDryRun: the plan, and not one byte written.
func TestAdoptDryRun(t *testing.T) {
	in := newInputs(t)
	img, _ := debianBIOS(t, 1100*mib)
	sum := imageSum(t, img)
	cfg := adoptConfig(in, GRUBBIOS)
	cfg.DryRun = true
	info, err := Adopt(context.Background(), img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(info.Steps, "\n")
	t.Logf("plan:\n%s", plan)
	for _, want := range []string{
		`partition 1 "" (BIOS boot, 1 MiB at 1 MiB): reuse: stagehand's GRUB core image replaces the one there`,
		`partition 2 "debian-root" (Linux file system, 200 MiB at 2 MiB): keep as it is`,
		`add partition 3 "EFI": new ESP (FAT32), for grub.cfg, grubenv and the slots, 300 MiB at 202 MiB`,
		`add partition 4 "META": META, 1 MiB at 502 MiB`,
		`add partition 5 "STAGE": STAGE, 512 MiB at 503 MiB`,
		"write the GPT (primary and backup) once",
		"prefix (,gpt3)/grub",
		"write META (partition 4): slot a (v1) good and active",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan does not say %q", want)
		}
	}
	if !info.DryRun || len(info.Partitions) != 5 {
		t.Errorf("info %+v", info)
	}
	if imageSum(t, img) != sum {
		t.Error("the dry run changed the disk")
	}
}

// TestAdoptSmallStage: free space for less than the default STAGE but
// two payloads: a smaller STAGE, said so in the plan.
func TestAdoptSmallStage(t *testing.T) {
	in := newInputs(t)
	img, _ := debianBIOS(t, 600*mib)
	info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS))
	if err != nil {
		t.Fatal(err)
	}
	st := info.Partitions[4]
	if st.Label != disk.LabelSTAGE || st.Size != 600*mib-mib-503*mib {
		t.Errorf("STAGE %+v", st)
	}
	if plan := strings.Join(info.Steps, "\n"); !strings.Contains(plan, "below the default 512 MiB") {
		t.Errorf("the plan does not say STAGE is smaller:\n%s", plan)
	}
}

// TestAdoptRefuses: every refusal is one line, and leaves the disk byte
// for byte as it was.
func TestAdoptRefuses(t *testing.T) {
	in := newInputs(t)
	dir := t.TempDir()
	big := filepath.Join(dir, "big-initramfs")
	os.WriteFile(big, nil, 0o644)
	os.Truncate(big, 150*mib)
	for _, tc := range []struct {
		name string
		disk func(t *testing.T) string
		mod  func(*AdoptConfig)
		err  string
	}{
		{"no free space", func(t *testing.T) string {
			return sgdiskImage(t, 600*mib, "-n", "1:2048:+1M", "-t", "1:EF02", "-n", "2:0:0", "-t", "2:8300")
		}, nil, "has no free extent large enough: adopt needs at least 309 MiB in one piece (EFI 300 + META 1 + STAGE 8, in MiB: STAGE twice the payload, 512 by default), and there is no free space at all; make room"},
		{"too little free space", func(t *testing.T) string {
			return sgdiskImage(t, 600*mib, "-n", "1:2048:+1M", "-t", "1:EF02", "-n", "2:0:+400M", "-t", "2:8300")
		}, nil, "the largest free extent is 197 MiB at 402 MiB; make room at the end of the disk (shrink the last partition, or grow the disk and move the backup GPT there with sgdisk -e), or give a smaller --esp-size (at least 256 MiB)"},
		{"too little free space for --stage-size", func(t *testing.T) string {
			return sgdiskImage(t, 1200*mib, "-n", "1:2048:+1M", "-t", "1:EF02", "-n", "2:0:+400M", "-t", "2:8300")
		}, func(c *AdoptConfig) { c.StageSize = 1024 * mib }, "adopt needs 1325 MiB in one piece (EFI 300 + META 1 + STAGE 1024, in MiB), and the largest free extent is 797 MiB at 402 MiB; make room at the end of the disk (shrink the last partition, or grow the disk and move the backup GPT there with sgdisk -e), or give a smaller --stage-size (at least 8 MiB, twice the payload) or --esp-size (at least 256 MiB)"},
		{"MBR disk", func(t *testing.T) string {
			img := filepath.Join(t.TempDir(), "mbr.img")
			os.WriteFile(img, nil, 0o644)
			os.Truncate(img, 100*mib)
			mbr := make([]byte, 512)
			mbr[446+4] = 0x83
			binary.LittleEndian.PutUint32(mbr[446+8:], 2048)
			binary.LittleEndian.PutUint32(mbr[446+12:], 100_000)
			mbr[510], mbr[511] = 0x55, 0xaa
			writeAt(t, img, 0, mbr)
			return img
		}, nil, "convert it to GPT first (sgdisk -g"},
		{"blank disk", func(t *testing.T) string {
			img := filepath.Join(t.TempDir(), "blank.img")
			os.WriteFile(img, nil, 0o644)
			os.Truncate(img, 100*mib)
			return img
		}, nil, "has no partition table"},
		{"already stagehand", func(t *testing.T) string {
			img := filepath.Join(t.TempDir(), "sh.img")
			cfg := in.config()
			cfg.Bootloader, cfg.Layout.Size = GRUBBIOS, 1024*mib
			if _, err := Init(context.Background(), img, cfg); err != nil {
				t.Fatal(err)
			}
			return img
		}, nil, "already a stagehand disk (META in partition 2, slot a active)"},
		{"STAGE without META", func(t *testing.T) string {
			img, _ := debianBIOS(t, 1100*mib)
			run(t, "sgdisk", "-n", "3:0:+10M", "-c", "3:STAGE", img)
			return img
		}, nil, "already a stagehand disk, or part of one"},
		{"small ESP", func(t *testing.T) string {
			img := sgdiskImage(t, 1200*mib, "-n", "1:2048:+260M", "-t", "1:EF00", "-n", "2:0:+100M")
			mkfsFAT32(t, img, mib, 260*mib, nil)
			return img
		}, func(c *AdoptConfig) { c.Initramfs = big }, "has 255 MiB free, and two slots of this payload with GRUB need 312 MiB"},
		{"FAT16 ESP", func(t *testing.T) string {
			img := sgdiskImage(t, 1200*mib, "-n", "1:2048:+200M", "-t", "1:EF00")
			vol := filepath.Join(t.TempDir(), "fat16")
			os.WriteFile(vol, nil, 0o644)
			os.Truncate(vol, 200*mib)
			run(t, "mkfs.fat", "-F", "16", vol)
			b, _ := os.ReadFile(vol)
			writeAt(t, img, mib, b)
			return img
		}, nil, "partition 1, the ESP, holds a FAT12 or FAT16 file system, and stagehand writes FAT32 only"},
		{"unformatted ESP", func(t *testing.T) string {
			return sgdiskImage(t, 1200*mib, "-n", "1:2048:+300M", "-t", "1:EF00")
		}, nil, "holds no FAT file system"},
		{"another GRUB on the ESP", func(t *testing.T) string {
			img := sgdiskImage(t, 1200*mib, "-n", "1:2048:+300M", "-t", "1:EF00")
			mkfsFAT32(t, img, mib, 300*mib, map[string][]byte{"grub/grub.cfg": []byte("menuentry x {}\n")})
			return img
		}, nil, "holds grub/grub.cfg where stagehand's goes"},
		{"small BIOS boot partition", func(t *testing.T) string {
			return sgdiskImage(t, 1200*mib, "-a", "1", "-n", "1:34:+16K", "-t", "1:EF02", "-a", "2048", "-n", "2:2048:+100M")
		}, nil, "does not fit in BIOS boot partition 1 (16 KiB): delete it (sgdisk -d 1 "},
		{"two ESPs", func(t *testing.T) string {
			return sgdiskImage(t, 1200*mib, "-n", "1:2048:+300M", "-t", "1:EF00", "-n", "2:0:+300M", "-t", "2:EF00")
		}, nil, "has 2 EFI system partitions"},
		{"EFI label", func(t *testing.T) string {
			return sgdiskImage(t, 1200*mib, "-n", "1:2048:+10M", "-c", "1:EFI")
		}, nil, "partition 1 is labelled EFI but is no EFI system partition"},
		{"grown disk", func(t *testing.T) string {
			img, _ := debianBIOS(t, 1100*mib)
			os.Truncate(img, 1200*mib)
			return img
		}, nil, "sgdisk -e"},
		{"missing kernel", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.Kernel = filepath.Join(dir, "nope") }, "no such file"},
		{"not a kernel", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.Kernel = in.initramfs }, "not a Linux kernel"},
		{"systemd-boot", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.Bootloader = SystemdBoot }, "adopt installs GRUB"},
		{"small STAGE", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.StageSize = 4 * mib }, "less than twice the payload"},
		{"small new ESP", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.ESPSize = 64 * mib }, "below the minimum of 256 MiB"},
		{"quote in cmdline", func(t *testing.T) string { img, _ := debianBIOS(t, 1100*mib); return img },
			func(c *AdoptConfig) { c.Cmdline = `root="x"` }, "slot a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.disk(t)
			sum := imageSum(t, img)
			cfg := adoptConfig(in, GRUBBIOS)
			if strings.Contains(tc.name, "ESP") || strings.Contains(tc.name, "GRUB on") {
				cfg.Bootloader = GRUBEFI
			}
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			for _, dry := range []bool{true, false} {
				cfg.DryRun = dry
				_, err := Adopt(context.Background(), img, cfg)
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Adopt (dry run %v) = %v, want %q", dry, err, tc.err)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("the error spans lines: %q", err)
				}
				if !dry {
					t.Log(err)
				}
			}
			if imageSum(t, img) != sum {
				t.Error("the refused adopt changed the disk")
			}
		})
	}
}

// TestAdoptKeepsTalosMETA: a META in stagehand's (Talos's) format without
// a slot record is reused, its records kept.
func TestAdoptKeepsTalosMETA(t *testing.T) {
	in := newInputs(t)
	img, _ := debianBIOS(t, 1100*mib)
	run(t, "sgdisk", "-n", "3:0:+1M", "-c", "3:META", img)
	d, err := disk.Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.META()
	if err != nil {
		t.Fatal(err)
	}
	s, err := meta.Format(r, r.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(b *meta.Block) error { return b.Set(0x07, []byte("ghcr.io/siderolabs/installer:v1.7.0")) }); err != nil {
		t.Fatal(err)
	}
	d.Close()
	info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(info.Steps, "\n"), `partition 3 "META" (Linux file system, 1 MiB at 202 MiB): reuse META (its records are kept)`) {
		t.Errorf("plan:\n%s", strings.Join(info.Steps, "\n"))
	}
	store := checkMETA(t, img, "v1")
	if v, ok := store.Block().Get(0x07); !ok || string(v) != "ghcr.io/siderolabs/installer:v1.7.0" {
		t.Errorf("Talos's tag 0x07: %q, %v", v, ok)
	}
}

// TestAdoptCut: an adopt cut short at any sync is finished by running it
// again, whatever was durable: each cut state (the disk as it was, with
// the writes made before the cut's sync) is adopted again, and ends a
// stagehand disk with slot a good, the ESP whole and the old partitions
// as they were.
func TestAdoptCut(t *testing.T) {
	in := newInputs(t)
	orig, root := debianBIOS(t, 1100*mib)
	rootSum := regionSum(t, orig, root.Offset, root.Size)
	work := filepath.Join(t.TempDir(), "work.img")
	copyFile(t, orig, work)
	rec := &recorder{}
	stop, err := disk.Record(work, rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Adopt(context.Background(), work, adoptConfig(in, GRUBBIOS)); err != nil {
		t.Fatal(err)
	}
	stop()
	t.Logf("the adopt made %d writes in %d syncs", len(rec.ops), rec.flushes)
	// A cut after each sync, and one in the middle of the writes before
	// each sync (the first half of them made, in order).
	type cut struct{ syncs, extra int }
	var cuts []cut
	for n := 0; n < rec.flushes; n++ {
		if n > 0 {
			cuts = append(cuts, cut{n, 0})
		}
		if w := rec.between(n); w > 1 {
			cuts = append(cuts, cut{n, w / 2})
		}
	}
	for _, c := range cuts {
		t.Run(fmt.Sprintf("after sync %d and %d writes", c.syncs, c.extra), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "cut.img")
			copyFile(t, orig, img)
			rec.replay(t, img, c.syncs, c.extra)
			info, err := Adopt(context.Background(), img, adoptConfig(in, GRUBBIOS))
			if err != nil && !strings.Contains(err.Error(), "already a stagehand disk (") {
				t.Fatalf("adopt after the cut: %v", err)
			}
			if info != nil && strings.Contains(strings.Join(info.Steps, "\n"), "left by an adopt cut short") {
				t.Logf("finished an adopt cut short")
			}
			if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
				t.Errorf("sgdisk -v:\n%s", out)
			}
			if regionSum(t, img, root.Offset, root.Size) != rootSum {
				t.Error("the root partition changed")
			}
			d, err := disk.Open(img, false)
			if err != nil {
				t.Fatal(err)
			}
			esp, err := d.Find(disk.LabelESP)
			d.Close()
			if err != nil {
				t.Fatal(err)
			}
			checkGRUBFiles(t, img, esp.Partition, in)
			checkMETA(t, img, "v1")
		})
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	out, err := exec.Command("cp", "--sparse=always", from, to).CombinedOutput()
	if err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// recorder keeps an adopt's writes, and where each sync came.
type recorder struct {
	ops     []op
	flushes int
}

type op struct {
	off, n int64
	data   []byte // nil: zeroed
	flush  int    // the syncs before it
}

func (r *recorder) Wrote(off int64, p []byte) {
	r.ops = append(r.ops, op{off: off, n: int64(len(p)), data: bytes.Clone(p), flush: r.flushes})
}

func (r *recorder) Zeroed(off, n int64) { r.ops = append(r.ops, op{off: off, n: n, flush: r.flushes}) }

func (r *recorder) Flushed() { r.flushes++ }

// between counts the writes made after sync n, before the next.
func (r *recorder) between(n int) int {
	c := 0
	for _, o := range r.ops {
		if o.flush == n {
			c++
		}
	}
	return c
}

// replay makes img what it would hold after a cut right after sync n
// and extra writes more: every write made before sync n, and the first
// extra after it.
func (r *recorder) replay(t testing.TB, img string, n, extra int) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, o := range r.ops {
		if o.flush > n || o.flush == n && extra == 0 {
			break
		}
		if o.flush == n {
			extra--
		}
		b := o.data
		if b == nil {
			b = make([]byte, o.n)
		}
		if _, err := f.WriteAt(b, o.off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAdoptLoop: a real block device whose root is mounted, as on a
// running machine: adopt goes ahead (the new partitions are not mounted),
// but not while the ESP it writes is mounted; the kernel is told of the
// new partitions one by one (BLKPG), since BLKRRPART fails while a
// partition is mounted.
func TestAdoptLoop(t *testing.T) {
	in := newInputs(t)
	img := sgdiskImage(t, 1200*mib, "-n", "1:2048:+300M", "-t", "1:EF00", "-n", "2:0:+100M", "-t", "2:8304")
	// The ESP holds ext4 at first: this host's kernel may mount no FAT,
	// and the ESP must be mounted for the refusal.
	run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", mib), img, "300M")
	run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 301*mib), img, "100M")
	dev := disktest.Loop(t, img)
	// This host's kernel may have no GPT parser: add the partitions by
	// hand, as the kernel would have.
	sysfs := "/sys/class/block/" + filepath.Base(dev)
	for _, p := range []struct{ n, start, size int64 }{{1, mib, 300 * mib}, {2, 301 * mib, 100 * mib}} {
		if _, err := os.Stat(fmt.Sprintf("%s/%sp%d", sysfs, filepath.Base(dev), p.n)); err == nil {
			continue
		}
		run(t, "addpart", dev, fmt.Sprint(p.n), fmt.Sprint(p.start/512), fmt.Sprint(p.size/512))
	}
	mount := func(part, dir string) func() {
		run(t, "mount", part, dir)
		done := false
		umount := func() {
			if !done {
				run(t, "umount", dir)
				done = true
			}
		}
		t.Cleanup(umount)
		return umount
	}
	rootDir, espDir := t.TempDir(), t.TempDir()
	umountRoot := mount(dev+"p2", rootDir)
	umountESP := mount(dev+"p1", espDir)

	sum := imageSum(t, img)
	if _, err := Adopt(context.Background(), dev+"p2", adoptConfig(in, GRUBEFI)); err == nil || !strings.Contains(err.Error(), "is a partition: give the whole disk") {
		t.Errorf("Adopt of a partition = %v", err)
	}
	_, err := Adopt(context.Background(), dev, adoptConfig(in, GRUBEFI))
	if err == nil || !strings.Contains(err.Error(), "partition 1, the ESP, is mounted on "+espDir+": unmount it first") {
		t.Fatalf("Adopt with the ESP mounted = %v", err)
	}
	if imageSum(t, img) != sum {
		t.Fatal("the refused adopt changed the disk")
	}
	umountESP()
	// Now a FAT32, written through the disk's device, whose page cache
	// adopt reads.
	esp := filepath.Join(t.TempDir(), "esp.img")
	os.WriteFile(esp, nil, 0o644)
	mkfsFAT32(t, esp, mib, 300*mib, map[string][]byte{"EFI/debian/grubx64.efi": []byte("grub")})
	writeAt(t, dev, mib, readAt(t, esp, mib, 300*mib))
	info, err := Adopt(context.Background(), dev, adoptConfig(in, GRUBEFI))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`efibootmgr -c -d %s -p 1 -L stagehand -l '\EFI\BOOT\BOOTX64.EFI'`, dev); info.EFIBootEntry != want {
		t.Errorf("EFIBootEntry = %q, want %q", info.EFIBootEntry, want)
	}
	// The kernel knows META and STAGE.
	for _, p := range info.Partitions[2:] {
		b, err := os.ReadFile(fmt.Sprintf("%s/%sp%d/start", sysfs, filepath.Base(dev), p.Index))
		if err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(p.Offset/512) {
			t.Errorf("the kernel's partition %d (%s) starts at %q (%v), not sector %d", p.Index, p.Label, b, err, p.Offset/512)
		}
	}
	umountRoot()
	run(t, "e2fsck", "-n", "-f", dev+"p2")
	checkGRUBFiles(t, img, info.Partitions[0], in)
	checkMETA(t, img, "v1")
}
