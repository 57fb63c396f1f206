package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// Usage is what View tells of a FAT32 volume's room.
type Usage struct {
	ClusterSize int64
	Total       int64 // bytes in data clusters
	Free        int64 // bytes in free clusters, counted in the FAT (not FSInfo's hint)
}

// View reads the file system of size bytes on dev as Open would, without
// ever writing to dev: the check of an ESP another tool made, or one a cut
// left, before anything may be written to the disk. What Open's repair
// would write (FAT copies made one, clusters freed, entries dropped; see
// repairFAT) is written to memory only, and so is anything written through
// the returned volume: it is for reading. It fails, in a line saying why,
// unless the volume is a FAT32 that go-diskfs reads: a FAT12 or FAT16
// (which mkfs.fat makes below 512 MiB unless told -F 32) is refused.
func View(dev io.ReaderAt, size int64) (*Volume, Usage, error) {
	bs := make([]byte, 512)
	if _, err := dev.ReadAt(bs, 0); err != nil {
		return nil, Usage{}, fmt.Errorf("reading the boot sector: %w", err)
	}
	if binary.LittleEndian.Uint16(bs[510:]) != 0xaa55 || binary.LittleEndian.Uint16(bs[11:]) < 512 || bs[13] == 0 {
		return nil, Usage{}, errors.New("no FAT file system (no FAT boot sector)")
	}
	// FAT12 and FAT16 have a root directory of their own and the FAT's
	// size in the 16-bit field; FAT32 has neither (Microsoft's FAT
	// specification, 3.1 and 3.5).
	if binary.LittleEndian.Uint16(bs[17:]) != 0 || binary.LittleEndian.Uint16(bs[22:]) != 0 {
		return nil, Usage{}, errors.New("a FAT12 or FAT16 file system, and stagehand writes FAT32 only")
	}
	g, err := parseGeometry(bs)
	if err != nil {
		return nil, Usage{}, err
	}
	if g.maxCluster-1 < 65525 {
		return nil, Usage{}, fmt.Errorf("a FAT32 of %d clusters, below the 65525 that make a FAT32 (FAT specification, 3.5): other tools read it as FAT16", g.maxCluster-1)
	}
	if g.dataStart()+int64(g.maxCluster-1)*g.clusterSize() > size {
		return nil, Usage{}, errors.New("a FAT32 larger than its partition")
	}
	ov := &overlay{dev: dev, blocks: map[int64][]byte{}}
	st := newStorage(ov, size)
	if _, err := repairFAT(st); err != nil {
		return nil, Usage{}, fmt.Errorf("a FAT32 with damage stagehand does not repair: %w", err)
	}
	f, err := fat32.Read(st, size, 0, 512)
	if err != nil {
		return nil, Usage{}, fmt.Errorf("a FAT32 go-diskfs cannot read: %w", err)
	}
	free, err := st.freeClusters()
	if err != nil {
		return nil, Usage{}, err
	}
	cs := g.clusterSize()
	return &Volume{dev: ov, st: st, fs: f, size: size}, Usage{ClusterSize: cs, Total: int64(g.maxCluster-1) * cs, Free: free * cs}, nil
}

// overlay is a Device over a reader that keeps what is written in memory,
// in 512-byte blocks: reads see the writes, the reader never does.
type overlay struct {
	dev    io.ReaderAt
	blocks map[int64][]byte // by block number
}

const overlayBlock = 512

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.dev.ReadAt(p, off)
	if len(o.blocks) == 0 {
		return n, err
	}
	for b := off / overlayBlock; b*overlayBlock < off+int64(len(p)); b++ {
		blk, ok := o.blocks[b]
		if !ok {
			continue
		}
		from := max(b*overlayBlock, off)
		to := min((b+1)*overlayBlock, off+int64(len(p)))
		copy(p[from-off:to-off], blk[from-b*overlayBlock:])
		if int(to-off) > n {
			n, err = int(to-off), nil
		}
	}
	if n == len(p) {
		err = nil
	}
	return n, err
}

func (o *overlay) WriteAt(p []byte, off int64) (int, error) {
	for b := off / overlayBlock; b*overlayBlock < off+int64(len(p)); b++ {
		blk, ok := o.blocks[b]
		if !ok {
			blk = make([]byte, overlayBlock)
			o.ReadAt(blk, b*overlayBlock) // what is there, for a partial write
			o.blocks[b] = blk
		}
		from := max(b*overlayBlock, off)
		to := min((b+1)*overlayBlock, off+int64(len(p)))
		copy(blk[from-b*overlayBlock:], p[from-off:to-off])
	}
	return len(p), nil
}

func (o *overlay) Sync() error { return nil }
