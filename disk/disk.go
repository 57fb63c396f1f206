package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/meta"
)

// Labels of the partitions stagehand uses (DESIGN.md, "Disk layout").
const (
	LabelESP   = "EFI"
	LabelMETA  = "META"
	LabelSTAGE = "STAGE"
)

// ErrNotStagehand marks a disk without the stagehand layout.
var ErrNotStagehand = errors.New("not a stagehand disk")

// Disk is an open disk with its partition table.
type Disk struct {
	f          *os.File
	path       string
	size       int64
	sectorSize int
	block      bool
	parts      []*gpt.Partition
	rec        Recorder // see Record; nil almost always
}

// Open opens path (an image file or a whole-disk block device) and reads its
// GPT. writable opens it read-write; nothing is written by Open.
func Open(path string, writable bool) (*Disk, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("opening %s: permission denied (run as root, or as a user who may write the disk)", path)
		}
		return nil, fmt.Errorf("opening disk: %w", err)
	}
	d := &Disk{f: f, path: path}
	if writable {
		d.rec = recorderFor(path)
	}
	if err := d.probe(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func (d *Disk) probe() error {
	st, err := d.f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", d.path, err)
	}
	sizes := []int{512, 4096}
	switch {
	case st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0:
		d.block = true
		fd := int(d.f.Fd())
		sz, err := unix.IoctlGetInt(fd, unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("%s: %w", d.path, os.NewSyscallError("ioctl(BLKGETSIZE64)", err))
		}
		ss, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
		if err != nil {
			return fmt.Errorf("%s: %w", d.path, os.NewSyscallError("ioctl(BLKSSZGET)", err))
		}
		d.size, sizes = int64(sz), []int{ss}
	case st.Mode().IsRegular():
		d.size = st.Size()
	default:
		return fmt.Errorf("%s is neither a block device nor an image file", d.path)
	}
	var firstErr error
	for _, ss := range sizes {
		t, err := gpt.Read(d.f, ss, ss)
		if err == nil {
			d.sectorSize, d.parts = ss, t.Partitions
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return fmt.Errorf("%s has no valid GPT (%v): %w; create one with `stager disk init`", d.path, firstErr, ErrNotStagehand)
}

// Close closes the disk, releasing any lock taken on it.
func (d *Disk) Close() error { return d.f.Close() }

// Path is the path the disk was opened with.
func (d *Disk) Path() string { return d.path }

// Size is the size of the disk in bytes.
func (d *Disk) Size() int64 { return d.size }

// SectorSize is the disk's logical block size, the unit of its GPT's LBAs.
func (d *Disk) SectorSize() int64 { return int64(d.sectorSize) }

// IsBlockDevice tells a block device from an image file.
func (d *Disk) IsBlockDevice() bool { return d.block }

// Partition is a partition as the GPT describes it.
type Partition struct {
	Index  int // 1-based, as in /dev/sda1
	Label  string
	GUID   string
	Offset int64
	Size   int64
}

// Partitions lists the partitions in table order.
func (d *Disk) Partitions() []Partition {
	var ps []Partition
	for _, p := range d.parts {
		if p.Start == 0 && p.End == 0 {
			continue
		}
		ps = append(ps, Partition{
			Index:  p.Index,
			Label:  p.Name,
			GUID:   p.GUID,
			Offset: int64(p.Start) * int64(d.sectorSize),
			Size:   int64(p.End-p.Start+1) * int64(d.sectorSize),
		})
	}
	return ps
}

// Find returns the one partition labelled label, as a region.
func (d *Disk) Find(label string) (*Region, error) {
	var found []Partition
	for _, p := range d.Partitions() {
		if p.Label == label {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%s has no partition labelled %s: %w; create the layout with `stager disk init`", d.path, label, ErrNotStagehand)
	case 1:
		return d.region(found[0])
	default:
		return nil, fmt.Errorf("%s has %d partitions labelled %s (partitions %d and %d): relabel all but one", d.path, len(found), label, found[0].Index, found[1].Index)
	}
}

// META returns the META partition: labelled META and exactly 1 MiB. A
// partition of any other size is not META, whatever its label.
func (d *Disk) META() (*Region, error) {
	r, err := d.Find(LabelMETA)
	if err != nil {
		return nil, err
	}
	if r.Size != meta.PartitionSize {
		return nil, fmt.Errorf("partition %d of %s is labelled META but is %d bytes, and META is exactly %d bytes (1 MiB): %w",
			r.Index, d.path, r.Size, meta.PartitionSize, ErrNotStagehand)
	}
	return r, nil
}

func (d *Disk) region(p Partition) (*Region, error) {
	if p.Offset+p.Size > d.size {
		return nil, fmt.Errorf("partition %d (%s) of %s ends at byte %d, past the end of the disk at %d: the image is truncated",
			p.Index, p.Label, d.path, p.Offset+p.Size, d.size)
	}
	return &Region{Partition: p, d: d}, nil
}
