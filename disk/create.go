package disk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/meta"
)

// Sizes of the layout Create writes.
const (
	mib        = 1 << 20   // a mebibyte
	MinESPSize = 256 * mib // DESIGN.md: ESP ≥ 256 MiB, never a 64 MiB FAT32
	// DefaultESPSize is past the 260 MiB line above which FAT32 gets 4 KiB
	// clusters instead of 512-byte ones (mkfs.fat's table, which go-diskfs
	// follows): the FAT is 8 times smaller, and writing a slot through
	// go-diskfs 2.5 times faster (systemdboot's BenchmarkInstallSlot: 241
	// against 97 MB/s on the build machine).
	DefaultESPSize   = 300 * mib
	DefaultStageSize = 2 * 256 * mib // twice the largest payload expected
	LabelRoot        = "ROOT"
	// LabelBIOS is the BIOS boot partition's (Layout.BIOSBoot), which
	// holds GRUB's i386-pc core image; BIOSBootSize is its size, what
	// grub-install recommends (GRUB 2.06 warns below 1 MiB).
	LabelBIOS    = "BIOS"
	BIOSBootSize = mib
)

// Layout is what Create writes: a GPT with the ESP (EF00), META (exactly
// 1 MiB), STAGE, an optional root partition and an optional BIOS boot
// partition, in this order, each 1 MiB aligned. The BIOS boot partition
// comes last so that the others keep their numbers (ESP 1, META 2, STAGE
// 3, root 4) with it or without it.
type Layout struct {
	Size      int64 // the whole disk; 0: an existing file's or the device's size
	ESPSize   int64 // 0: DefaultESPSize
	StageSize int64 // 0: DefaultStageSize
	RootSize  int64 // 0: no root partition
	// BIOSBoot adds a BIOS boot partition (GPT type
	// 21686148-6449-6E6F-744E-656564454649, label LabelBIOS, BIOSBootSize)
	// for GRUB's core image, to boot the disk from a PC BIOS.
	BIOSBoot bool
}

func (l Layout) withDefaults() Layout {
	if l.ESPSize == 0 {
		l.ESPSize = DefaultESPSize
	}
	if l.StageSize == 0 {
		l.StageSize = DefaultStageSize
	}
	return l
}

// MinSize is the smallest disk that holds the layout: the partitions, plus
// 1 MiB at the start for the protective MBR and the primary GPT, and 1 MiB at
// the end for the backup GPT.
func (l Layout) MinSize() int64 {
	l = l.withDefaults()
	return mib + l.ESPSize + meta.PartitionSize + l.StageSize + l.RootSize + l.biosBootSize() + mib
}

// biosBootSize is the size of the BIOS boot partition: 0 without one.
func (l Layout) biosBootSize() int64 {
	if l.BIOSBoot {
		return BIOSBootSize
	}
	return 0
}

func (l Layout) check() error {
	for _, s := range []struct {
		name string
		v    int64
	}{{"disk size", l.Size}, {"ESP size", l.ESPSize}, {"STAGE size", l.StageSize}, {"root size", l.RootSize}} {
		if s.v < 0 {
			return fmt.Errorf("%s %d is negative", s.name, s.v)
		}
		if s.v%mib != 0 {
			return fmt.Errorf("%s %d is not a multiple of 1 MiB", s.name, s.v)
		}
	}
	if l.ESPSize < MinESPSize {
		return fmt.Errorf("ESP size %d MiB is below the minimum of %d MiB", l.ESPSize/mib, MinESPSize/mib)
	}
	if l.Size < l.MinSize() {
		bios := ""
		if l.BIOSBoot {
			bios = fmt.Sprintf(" + BIOS boot %d", BIOSBootSize/mib)
		}
		return fmt.Errorf("disk size %d MiB is too small for the layout: it needs at least %d MiB (ESP %d + META 1 + STAGE %d + root %d%s + 2 for the GPT)",
			l.Size/mib, l.MinSize()/mib, l.ESPSize/mib, l.StageSize/mib, l.RootSize/mib, bios)
	}
	return nil
}

type createOptions struct{ force bool }

// CreateOption changes what Create accepts.
type CreateOption func(*createOptions)

// WithForce lets Create overwrite a disk or image file that holds data.
func WithForce() CreateOption { return func(o *createOptions) { o.force = true } }

// Create writes a new GPT with layout l to path (an image file, created if
// missing, or a whole-disk block device) and returns the disk, open for
// writing and locked (waiting up to LockTimeout for another stager). Every check comes before the first write: a block
// device with a mounted, swapped-on or otherwise held partition is refused,
// and a disk or file that holds data (any byte set in its first or last
// MiB) is refused unless WithForce is given. An image file is made anew
// (sparse, all zeros); on a block device both ends and each partition's
// first MiB are zeroed, so that no old signature shows through. The
// partitions' contents are left to the caller (meta.Format, the ESP's file
// system).
func Create(ctx context.Context, path string, l Layout, opts ...CreateOption) (*Disk, error) {
	var o createOptions
	for _, opt := range opts {
		opt(&o)
	}
	l = l.withDefaults()
	st, err := os.Stat(path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("creating disk: %w", err)
	}
	block := exists && st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0
	switch {
	case !exists:
		if l.Size == 0 {
			return nil, fmt.Errorf("creating disk image %s: give its size", path)
		}
	case block:
		if err := checkNotBusy(path); err != nil {
			return nil, err
		}
	case st.Mode().IsRegular():
		if l.Size == 0 {
			l.Size = st.Size()
		}
	default:
		return nil, fmt.Errorf("%s is neither a block device nor an image file", path)
	}
	if !block {
		if err := l.check(); err != nil {
			return nil, fmt.Errorf("creating disk %s: %w", path, err)
		}
	}

	flag := os.O_RDWR | unix.O_CLOEXEC
	if !exists {
		flag |= os.O_CREATE | os.O_EXCL
	}
	if block {
		flag |= os.O_EXCL // the kernel refuses it while a partition is mounted
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		if block && errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%s is in use (a partition is mounted or held): %w", path, err)
		}
		return nil, fmt.Errorf("creating disk: %w", err)
	}
	d := &Disk{f: f, path: path, block: block}
	fail := func(err error) (*Disk, error) {
		f.Close()
		if !exists {
			os.Remove(path)
		}
		return nil, err
	}
	sector := 512
	if block {
		fd := int(f.Fd())
		sz, err := unix.IoctlGetInt(fd, unix.BLKGETSIZE64)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", path, os.NewSyscallError("ioctl(BLKGETSIZE64)", err)))
		}
		if sector, err = unix.IoctlGetInt(fd, unix.BLKSSZGET); err != nil {
			return fail(fmt.Errorf("%s: %w", path, os.NewSyscallError("ioctl(BLKSSZGET)", err)))
		}
		if l.Size != 0 && l.Size != int64(sz) {
			return fail(fmt.Errorf("%s is a block device of %d bytes: its size cannot be set to %d (leave the size out)", path, sz, l.Size))
		}
		l.Size = int64(sz) &^ (mib - 1)
		if err := l.check(); err != nil {
			return fail(fmt.Errorf("creating disk %s: %w", path, err))
		}
		l.Size = int64(sz)
	}
	if exists && !o.force {
		used, err := holdsData(f, path, block, st.Size())
		if err != nil {
			return fail(err)
		}
		if used {
			return fail(fmt.Errorf("%s holds data (a partition table or file system): pass --force to overwrite it", path))
		}
	}
	lctx, cancel := context.WithTimeout(ctx, LockTimeout)
	err = d.Lock(lctx, true)
	cancel()
	if err != nil {
		return fail(err)
	}

	// From here on the disk changes.
	if !block {
		// A clean sparse image of the requested size.
		if err := f.Truncate(0); err != nil {
			return fail(fmt.Errorf("creating disk image %s: %w", path, err))
		}
		if err := f.Truncate(l.Size); err != nil {
			return fail(fmt.Errorf("creating disk image %s: %w", path, err))
		}
	}
	d.size = l.Size
	table := &gpt.Table{LogicalSectorSize: sector, PhysicalSectorSize: sector, ProtectiveMBR: true}
	start := int64(mib)
	add := func(label string, size int64, typ gpt.Type) {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: len(table.Partitions) + 1,
			Start: uint64(start / int64(sector)),
			End:   uint64((start+size)/int64(sector) - 1),
			Size:  uint64(size),
			Type:  typ,
			Name:  label,
		})
		start += size
	}
	add(LabelESP, l.ESPSize, gpt.EFISystemPartition)
	add(LabelMETA, meta.PartitionSize, gpt.LinuxFilesystem)
	add(LabelSTAGE, l.StageSize, gpt.LinuxFilesystem)
	if l.RootSize > 0 {
		add(LabelRoot, l.RootSize, gpt.LinuxRootX86_64)
	}
	if l.BIOSBoot {
		add(LabelBIOS, BIOSBootSize, gpt.BIOSBoot)
	}
	if block {
		// Old GPTs and signatures at both ends go first.
		zero := make([]byte, mib)
		for _, off := range []int64{0, l.Size - mib} {
			if _, err := f.WriteAt(zero, off); err != nil {
				return fail(fmt.Errorf("wiping %s: %w", path, err))
			}
		}
		for _, p := range table.Partitions {
			if _, err := f.WriteAt(zero, int64(p.Start)*int64(sector)); err != nil {
				return fail(fmt.Errorf("wiping partition %d of %s: %w", p.Index, path, err))
			}
		}
	}
	if err := table.Write(f, l.Size); err != nil {
		return fail(fmt.Errorf("writing GPT to %s: %w", path, err))
	}
	if err := d.Sync(); err != nil {
		return fail(fmt.Errorf("writing GPT to %s: %w", path, err))
	}
	if err := d.probe(); err != nil {
		return fail(fmt.Errorf("reading back the GPT written to %s: %w", path, err))
	}
	return d, nil
}

// RereadPartitions asks the kernel to read the partition table of a block
// device again (BLKRRPART), so that its partition devices match the GPT.
// It does nothing for an image file.
func (d *Disk) RereadPartitions() error {
	if !d.block {
		return nil
	}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKRRPART, 0)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("%s: %w", d.path, os.NewSyscallError("ioctl(BLKRRPART)", e))
	}
}

// holdsData tells whether any byte of the first or last MiB is set.
func holdsData(f *os.File, path string, block bool, size int64) (bool, error) {
	if block {
		sz, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			return false, fmt.Errorf("%s: %w", path, os.NewSyscallError("ioctl(BLKGETSIZE64)", err))
		}
		size = int64(sz)
	}
	buf := make([]byte, mib)
	for _, off := range []int64{0, max(size-mib, 0)} {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return false, fmt.Errorf("reading %s: %w", path, err)
		}
		for _, b := range buf[:n] {
			if b != 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

// checkNotBusy refuses a block device that is a partition, or that has a
// partition mounted, used as swap, or held by another device (device
// mapper, RAID).
func checkNotBusy(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		return fmt.Errorf("%s is a partition: give the whole disk", path)
	}
	devs := map[string]string{fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)): path}
	dirs := []string{sys}
	ents, err := os.ReadDir(sys)
	if err != nil {
		return fmt.Errorf("reading %s: %w", sys, err)
	}
	for _, e := range ents {
		p := filepath.Join(sys, e.Name())
		if _, err := os.Stat(filepath.Join(p, "partition")); err != nil {
			continue
		}
		dev, err := os.ReadFile(filepath.Join(p, "dev"))
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		devs[strings.TrimSpace(string(dev))] = "/dev/" + e.Name()
		dirs = append(dirs, p)
	}
	for _, dir := range dirs {
		holders, _ := os.ReadDir(filepath.Join(dir, "holders"))
		if len(holders) > 0 {
			return fmt.Errorf("%s is in use: %s is held by %s", path, devName(dir, devs), holders[0].Name())
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("reading the mount table: %w", err)
	}
	s := bufio.NewScanner(bytes.NewReader(mi))
	for s.Scan() {
		// id parent major:minor root mountpoint ...
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		if name, ok := devs[fields[2]]; ok {
			return fmt.Errorf("%s is in use: %s is mounted on %s", path, name, fields[4])
		}
	}
	if swaps, err := os.ReadFile("/proc/swaps"); err == nil {
		for _, line := range strings.Split(string(swaps), "\n")[1:] {
			fields := strings.Fields(line)
			var sst unix.Stat_t
			if len(fields) == 0 || unix.Stat(fields[0], &sst) != nil || sst.Mode&unix.S_IFMT != unix.S_IFBLK {
				continue
			}
			if name, ok := devs[fmt.Sprintf("%d:%d", unix.Major(sst.Rdev), unix.Minor(sst.Rdev))]; ok {
				return fmt.Errorf("%s is in use: %s is swap", path, name)
			}
		}
	}
	return nil
}

func devName(sysDir string, devs map[string]string) string {
	dev, _ := os.ReadFile(filepath.Join(sysDir, "dev"))
	if n, ok := devs[strings.TrimSpace(string(dev))]; ok {
		return n
	}
	return sysDir
}
