package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// repairFAT puts right what go-diskfs v1.9.4 leaves wrong on a FAT32, so
// that fsck.fat finds nothing: the clusters of removed or replaced files
// that it does not free are freed, the ".." entries of directories in the
// root point to cluster 0 (go-diskfs writes the root's cluster), and the
// FSInfo sector gets the true free cluster count. It reads and writes dev
// directly, and says whether it wrote anything: then the go-diskfs file
// system must be read again, and dev synced. It does not sync.
func repairFAT(dev Device) (bool, error) {
	bs := make([]byte, 512)
	if _, err := dev.ReadAt(bs, 0); err != nil {
		return false, fmt.Errorf("reading the boot sector: %w", err)
	}
	le16 := func(b []byte, off int) int64 { return int64(binary.LittleEndian.Uint16(b[off:])) }
	le32 := func(b []byte, off int) int64 { return int64(binary.LittleEndian.Uint32(b[off:])) }
	bps, spc, reserved, nfats := le16(bs, 11), int64(bs[13]), le16(bs, 14), int64(bs[16])
	total, fatSectors, root, fsinfo := le32(bs, 32), le32(bs, 36), uint32(le32(bs, 44)), le16(bs, 48)
	if bps < 512 || spc == 0 || nfats == 0 || fatSectors == 0 || binary.LittleEndian.Uint16(bs[510:]) != 0xaa55 {
		return false, errors.New("not a FAT32 boot sector")
	}
	dataStart := (reserved + nfats*fatSectors) * bps
	clusterSize := spc * bps
	count := (total - reserved - nfats*fatSectors) / spc // data clusters, numbered from 2
	maxCluster := uint32(count + 1)

	fatBytes := make([]byte, fatSectors*bps)
	if _, err := dev.ReadAt(fatBytes, reserved*bps); err != nil {
		return false, fmt.Errorf("reading the FAT: %w", err)
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
	wrote := false // a directory was put right
	var walk func(dir uint32, parentIsRoot bool, depth int) error
	walk = func(dir uint32, parentIsRoot bool, depth int) error {
		if depth > 64 {
			return errors.New("directories nested too deep")
		}
		buf := make([]byte, clusterSize)
		for _, c := range chain(dir) {
			off := dataStart + int64(c-2)*clusterSize
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
					if err := walk(first, dir == root, depth+1); err != nil {
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
				wrote = true
			}
		}
		return nil
	}
	if err := walk(root, false, 0); err != nil {
		return false, err
	}

	changed := false
	free, firstFree := int64(0), uint32(0)
	for c := uint32(2); c <= maxCluster; c++ {
		if !used[c] && next(c) != 0 {
			binary.LittleEndian.PutUint32(fatBytes[4*c:], binary.LittleEndian.Uint32(fatBytes[4*c:])&0xf0000000)
			changed = true
		}
		if next(c) == 0 {
			free++
			if firstFree == 0 {
				firstFree = c
			}
		}
	}
	if changed {
		for i := int64(0); i < nfats; i++ {
			if err := writeChanged(dev, fatBytes, (reserved+i*fatSectors)*bps); err != nil {
				return false, fmt.Errorf("writing FAT %d: %w", i+1, err)
			}
		}
	}
	// FSInfo, and its copy in the backup boot area.
	fi := make([]byte, 512)
	for _, sector := range []int64{fsinfo, le16(bs, 50) + fsinfo} {
		if sector == 0 || sector >= reserved {
			continue
		}
		if _, err := dev.ReadAt(fi, sector*bps); err != nil {
			return false, fmt.Errorf("reading FSInfo: %w", err)
		}
		if binary.LittleEndian.Uint32(fi) != 0x41615252 {
			continue
		}
		if binary.LittleEndian.Uint32(fi[488:]) == uint32(free) && binary.LittleEndian.Uint32(fi[492:]) == firstFree {
			continue
		}
		binary.LittleEndian.PutUint32(fi[488:], uint32(free))
		binary.LittleEndian.PutUint32(fi[492:], firstFree)
		if _, err := dev.WriteAt(fi, sector*bps); err != nil {
			return false, fmt.Errorf("writing FSInfo: %w", err)
		}
		changed = true
	}
	return changed || wrote, nil
}
