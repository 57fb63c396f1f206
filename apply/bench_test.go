package apply

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/internal/benchstat"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// benchLayout is the disk of BenchmarkApply, the same for every payload
// size: an ESP that holds a 512 MiB slot besides slot a, a STAGE of twice
// that.
const mib = disktest.MiB

var benchLayout = disk.Layout{ESPSize: 600 * mib, StageSize: 1040 * mib}

// BenchmarkApply applies staged payloads of 64, 256 and 512 MiB (an 8 MiB
// kernel, the rest initramfs, random bytes) to slot b of a disk image the
// way prestage does at boot: Open, Boot (verify the payload in STAGE, write
// the slot, read it back and check it, set boot-once, arm the trial),
// Close. Each run starts from the staged state (META and the EFI variables
// put back) with the image's pages dropped from the page cache, as after a
// power on; an untimed first run puts the slot's clusters where every later
// run writes them.
//
// It reports, each as the median of the runs with its min and max (-lo,
// -hi): apply-s, the whole apply; write-s, the slot write (InstallSlot, then
// fdatasync: the data is on disk); check-s, the read-back check; verify-s,
// what comes before the write (the payload read and hashed, META
// committed); direct-s, a sequential O_DIRECT write of the same bytes to the
// same place of the image (the slot's clusters), in 4 MiB requests, then
// fdatasync, as `dd oflag=direct` would, but from memory without a copy;
// write-MB/s and direct-MB/s; and
// write/direct, the ratio of the write's throughput to the direct write's
// (budget ≥ 0.9), taken run by run.
func BenchmarkApply(b *testing.B) {
	for _, size := range []int{64 * mib, 256 * mib, 512 * mib} {
		b.Run(fmt.Sprintf("size=%dMiB", size/mib), func(b *testing.B) { benchApply(b, size) })
	}
}

func benchApply(b *testing.B, size int) {
	ctx := context.Background()
	dir := b.TempDir()
	img := filepath.Join(dir, "disk.img")
	k1 := boottest.FakeKernel(b, dir, "6.1.0-v1", 2*mib+100)
	i1 := filepath.Join(dir, "initrd-v1")
	if err := os.WriteFile(i1, randomPayload(1, 4*mib), 0o644); err != nil {
		b.Fatal(err)
	}
	l := benchLayout
	l.Size = l.MinSize()
	if _, err := bootdisk.Init(ctx, img, bootdisk.Config{Layout: l, Kernel: k1, Initramfs: i1, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v1", LoaderEFI: k1}); err != nil {
		b.Fatal(err)
	}
	const kernelSize = 8 * mib
	k2 := boottest.FakeKernel(b, dir, "6.1.0-v2", kernelSize)
	i2 := filepath.Join(dir, "initrd-v2")
	if err := os.WriteFile(i2, randomPayload(2, size-kernelSize), 0o644); err != nil {
		b.Fatal(err)
	}
	built, err := installer.Build(installer.BuildOptions{Kernel: k2, Initramfs: i2, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v2", Arch: "amd64", TempDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	layout := filepath.Join(dir, "layout")
	if err := installer.WriteLayout(layout, "v2", built); err != nil {
		b.Fatal(err)
	}
	if _, err := stage.Stage(ctx, stage.Options{Disk: img, Image: "oci:" + layout + ":v2"}); err != nil {
		b.Fatal(err)
	}
	built.Close()
	os.RemoveAll(layout)
	kernel, _ := os.ReadFile(k2)
	initrd, _ := os.ReadFile(i2)
	os.Remove(i2)

	// The staged state: META's bytes and an empty EFI variable store.
	d, err := disk.Open(img, false)
	if err != nil {
		b.Fatal(err)
	}
	metaPart, err := d.META()
	if err != nil {
		b.Fatal(err)
	}
	espPart, err := d.Find(disk.LabelESP)
	if err != nil {
		b.Fatal(err)
	}
	metaOff, espOff, espSize := metaPart.Offset, espPart.Offset, espPart.Size
	staged := make([]byte, metaPart.Size)
	if _, err := metaPart.ReadAt(staged, 0); err != nil {
		b.Fatal(err)
	}
	d.Close()
	vars := efivar.Dir(filepath.Join(dir, "efivars"))
	reset := func() {
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(staged, metaOff); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		// A cold start: nothing of the image in the page cache.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(string(vars))
		if err := os.MkdirAll(string(vars), 0o755); err != nil {
			b.Fatal(err)
		}
	}

	var total, write, check, verify, direct, ratio []float64
	run := func(timed bool) {
		reset()
		t := &timedLoader{}
		start := time.Now()
		dk, err := Open(ctx, img, vars)
		if err != nil {
			b.Fatal(err)
		}
		t.Loader, t.sync = dk.Loader, dk.Disk.Sync
		dk.Loader = t
		dk.Booted = meta.SlotA
		dec, err := Boot(ctx, &dk.Env)
		if err != nil || dec.Action != Kexec {
			b.Fatalf("apply: %+v, %v", dec, err)
		}
		if err := dk.Close(); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		ranges := slotRanges(b, img, espOff, espSize)
		d := directWrite(b, img, ranges, kernel, initrd)
		if !timed {
			b.Logf("slot b on the ESP: kernel in %d extent(s) %v, initramfs in %d %v", len(ranges[0]), ranges[0], len(ranges[1]), ranges[1])
			return
		}
		total = append(total, end.Sub(start).Seconds())
		write = append(write, t.writeEnd.Sub(t.writeStart).Seconds())
		check = append(check, t.bootOnce.Sub(t.openSlot).Seconds())
		verify = append(verify, t.writeStart.Sub(start).Seconds())
		direct = append(direct, d.Seconds())
		ratio = append(ratio, d.Seconds()/t.writeEnd.Sub(t.writeStart).Seconds())
		b.Logf("run %d: apply %v, write %v, direct write %v", len(total), end.Sub(start).Round(time.Millisecond), t.writeEnd.Sub(t.writeStart).Round(100*time.Microsecond), d.Round(100*time.Microsecond))
	}
	b.StopTimer()
	run(false)
	b.StartTimer()
	for b.Loop() {
		run(true)
	}
	mb := float64(len(kernel)+len(initrd)) / 1e6
	benchstat.Report(b, total, "apply-s")
	benchstat.Report(b, write, "write-s")
	benchstat.Report(b, check, "check-s")
	benchstat.Report(b, verify, "verify-s")
	benchstat.Report(b, direct, "direct-s")
	benchstat.Report(b, ratio, "write/direct")
	b.ReportMetric(mb/benchstat.Median(write), "write-MB/s")
	b.ReportMetric(mb/benchstat.Median(direct), "direct-MB/s")
}

// timedLoader notes when the boot flow calls the bootloader: the slot write
// (InstallSlot, followed here by a data sync of the disk, so that the
// figure includes getting the bytes to the disk), the read-back (from
// OpenSlot to SetBootOnce, which the flow calls once the check passed).
type timedLoader struct {
	boot.Loader
	sync                                     func() error
	writeStart, writeEnd, openSlot, bootOnce time.Time
}

func (t *timedLoader) InstallSlot(ctx context.Context, slot meta.Slot, img boot.Image) error {
	t.writeStart = time.Now()
	err := t.Loader.InstallSlot(ctx, slot, img)
	if err == nil {
		err = t.sync()
	}
	t.writeEnd = time.Now()
	return err
}

func (t *timedLoader) OpenSlot(ctx context.Context, slot meta.Slot) (*boot.SlotFiles, error) {
	t.openSlot = time.Now()
	return t.Loader.OpenSlot(ctx, slot)
}

func (t *timedLoader) SetBootOnce(ctx context.Context, slot meta.Slot) error {
	t.bootOnce = time.Now()
	return t.Loader.SetBootOnce(ctx, slot)
}

// extent is a byte range of the image file.
type extent struct{ Off, Len int64 }

// slotRanges returns where slot b's kernel and initramfs lie in the image,
// each file's extents in file order, as go-diskfs's FAT says.
func slotRanges(b *testing.B, img string, espOff, espSize int64) [][]extent {
	f, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fs, err := fat32.Read(file.New(f, true), espSize, espOff, 512)
	if err != nil {
		b.Fatal(err)
	}
	var out [][]extent
	for _, name := range []string{"/stagehand/b/vmlinuz", "/stagehand/b/initramfs"} {
		fl, err := fs.OpenFile(name, os.O_RDONLY)
		if err != nil {
			b.Fatal(err)
		}
		fi, _ := fl.Stat()
		rs, err := fl.(*fat12.File).GetDiskRanges()
		if err != nil {
			b.Fatal(err)
		}
		var ext []extent
		for left, i := fi.Size(), 0; left > 0; i++ {
			n := min(int64(rs[i].Length), left)
			ext = append(ext, extent{espOff + int64(rs[i].Offset), n})
			left -= n
		}
		out = append(out, ext)
	}
	return out
}

// directWrite writes each file's bytes over its extents with O_DIRECT, in 4
// MiB requests straight from memory (the last one padded to the 512-byte
// sector with zeros, in the slack of the file's last cluster), then
// fdatasync, and returns how long that took: the device's speed for these
// bytes at this place.
func directWrite(b *testing.B, img string, files [][]extent, data ...[]byte) time.Duration {
	f, err := os.OpenFile(img, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var bufs [][]byte
	for _, d := range data {
		buf := disk.AlignedBuffer((len(d) + 511) / 512 * 512)
		copy(buf, d)
		bufs = append(bufs, buf)
	}
	start := time.Now()
	for i, ext := range files {
		pos := 0
		for _, e := range ext {
			for done := int64(0); done < e.Len; {
				n := min(4*mib, e.Len-done)
				w := (n + 511) / 512 * 512
				if _, err := f.WriteAt(bufs[i][pos:pos+int(w)], e.Off+done); err != nil {
					b.Fatalf("direct write at %d: %v", e.Off+done, err)
				}
				done += n
				pos += int(n)
			}
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// randomPayload returns n bytes that do not compress.
func randomPayload(seed uint64, n int) []byte {
	var key [32]byte
	key[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// BenchmarkNoopBoot is prestage's decision on a boot with nothing staged,
// on a disk image with the default layout: Open (META, the ESP), Boot,
// Close. It reports noop-ms, the median with its min and max: the same
// code takes far longer in a VM under TCG, where make bench measures it
// from prestage's log.
func BenchmarkNoopBoot(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	img := filepath.Join(dir, "disk.img")
	k1 := boottest.FakeKernel(b, dir, "6.1.0-v1", 8*mib)
	i1 := filepath.Join(dir, "initrd-v1")
	if err := os.WriteFile(i1, randomPayload(1, 12*mib), 0o644); err != nil {
		b.Fatal(err)
	}
	if _, err := bootdisk.Init(ctx, img, bootdisk.Config{Layout: disk.Layout{Size: disk.Layout{}.MinSize()}, Kernel: k1, Initramfs: i1, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v1", LoaderEFI: k1}); err != nil {
		b.Fatal(err)
	}
	vars := efivar.Dir(filepath.Join(dir, "efivars"))
	var msecs []float64
	for b.Loop() {
		start := time.Now()
		dk, err := Open(ctx, img, vars)
		if err != nil {
			b.Fatal(err)
		}
		dk.Booted = meta.SlotA
		if dec, err := Boot(ctx, &dk.Env); err != nil || dec.Action != Continue {
			b.Fatalf("no-op boot: %+v, %v", dec, err)
		}
		if err := dk.Close(); err != nil {
			b.Fatal(err)
		}
		msecs = append(msecs, float64(time.Since(start))/float64(time.Millisecond))
	}
	benchstat.Report(b, msecs, "noop-ms")
}
