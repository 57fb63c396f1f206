package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// repaired says what repairFAT put right.
type repaired struct {
	FAT    bool // clusters no file uses were freed
	Dirs   bool // a directory's ".." was set to the root
	FSInfo bool // the free cluster count and next free cluster were set
}

// any tells whether repairFAT wrote anything.
func (r repaired) any() bool { return r.FAT || r.Dirs || r.FSInfo }

// repairFAT puts right what go-diskfs v1.9.4 leaves wrong on a FAT32, so
// that fsck.fat finds nothing: the clusters of removed or replaced files
// that it does not free are freed, the ".." entries of directories in the
// root point to cluster 0 (go-diskfs writes the root's cluster), and the
// FSInfo sector gets the true free cluster count. It reads and writes dev
// directly, each FAT copy in one write (a storage writes only what
// changed), and says what it wrote: when it freed clusters, the go-diskfs
// file system must be read again (its table still holds them), and dev
// must be synced in any case. It does not sync.
func repairFAT(dev Device) (repaired, error) {
	var r repaired
	bs := make([]byte, 512)
	if _, err := dev.ReadAt(bs, 0); err != nil {
		return r, fmt.Errorf("reading the boot sector: %w", err)
	}
	g, err := parseGeometry(bs)
	if err != nil {
		return r, err
	}
	clusterSize, maxCluster := g.clusterSize(), g.maxCluster

	fatBytes := make([]byte, g.fatBytes())
	if _, err := dev.ReadAt(fatBytes, g.fatOffset(0)); err != nil {
		return r, fmt.Errorf("reading the FAT: %w", err)
	}
	next := func(c uint32) uint32 { return binary.LittleEndian.Uint32(fatBytes[4*c:]) & 0x0fffffff }
	used := make([]bool, maxCluster+1)
	// chain marks and returns a cluster chain, stopping at the end, a bad
	// link or a loop.
	chain := func(c uint32) []uint32 {
		var cs []uint32
		for c >= 2 && c <= maxCluster && !used[c] {
			used[c] = true
			cs = append(cs, c)
			c = next(c)
		}
		return cs
	}
	// walk marks what the directory at cluster dir holds; a directory in
	// the root has its ".." set to 0.
	var walk func(dir uint32, parentIsRoot bool, depth int) error
	walk = func(dir uint32, parentIsRoot bool, depth int) error {
		if depth > 64 {
			return errors.New("directories nested too deep")
		}
		buf := make([]byte, clusterSize)
		for _, c := range chain(dir) {
			off := g.clusterOffset(c)
			if _, err := dev.ReadAt(buf, off); err != nil {
				return fmt.Errorf("reading directory cluster %d: %w", c, err)
			}
			dirty := false
		entries:
			for i := 0; i+32 <= len(buf); i += 32 {
				e := buf[i : i+32]
				switch {
				case e[0] == 0:
					break entries
				case e[0] == 0xe5, e[11] == 0x0f, e[11]&0x08 != 0:
					continue // deleted, long name part, volume label
				}
				first := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
				switch name := string(e[:11]); {
				case name == ".          ":
				case name == "..         ":
					if parentIsRoot && first != 0 {
						binary.LittleEndian.PutUint16(e[20:], 0)
						binary.LittleEndian.PutUint16(e[26:], 0)
						dirty = true
					}
				case e[11]&0x10 != 0:
					if err := walk(first, dir == g.root, depth+1); err != nil {
						return err
					}
				default:
					chain(first)
				}
			}
			if dirty {
				if _, err := dev.WriteAt(buf, off); err != nil {
					return fmt.Errorf("writing directory cluster %d: %w", c, err)
				}
				r.Dirs = true
			}
		}
		return nil
	}
	if err := walk(g.root, false, 0); err != nil {
		return r, err
	}

	for c := uint32(2); c <= maxCluster; c++ {
		if !used[c] && next(c) != 0 {
			binary.LittleEndian.PutUint32(fatBytes[4*c:], binary.LittleEndian.Uint32(fatBytes[4*c:])&0xf0000000)
			r.FAT = true
		}
	}
	if r.FAT {
		for i := range g.nfats {
			if _, err := dev.WriteAt(fatBytes, g.fatOffset(i)); err != nil {
				return r, fmt.Errorf("writing FAT %d: %w", i+1, err)
			}
		}
	}
	r.FSInfo, err = writeFSInfo(dev, g, g.countFree(fatBytes, 0, len(fatBytes)), g.firstFree(fatBytes))
	return r, err
}
