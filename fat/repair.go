package fat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// repaired says what repairFAT put right.
type repaired struct {
	FAT     bool // clusters no file uses were freed, or chains cut to their files' sizes
	Copies  bool // the FAT copies differed (a cut between their writes) and were made one
	Entries bool // directory entries whose clusters a cut left unallocated were dropped
	Dirs    bool // a directory's ".." was set to the root
	FSInfo  bool // the free cluster count and next free cluster were set
}

// any tells whether repairFAT wrote anything.
func (r repaired) any() bool { return r.FAT || r.Copies || r.Entries || r.Dirs || r.FSInfo }

// reread tells whether the go-diskfs file system must be read again: its
// table or a directory it read is not what the device holds any more.
func (r repaired) reread() bool { return r.FAT || r.Copies || r.Entries }

// fatEOC is the smallest end-of-chain value of a FAT32 entry.
const fatEOC = 0x0ffffff8

// repairFAT puts right what go-diskfs v1.9.4 leaves wrong on a FAT32, and
// what a power cut leaves when the writes since the last sync landed in
// any subset (a disk's volatile cache, see docs/crash-states.md, the crash model), so
// that fsck.fat finds nothing and go-diskfs reads the file system:
//
//   - FAT copies that differ are made one: an entry takes the first copy's
//     value unless that is free and another copy's is not (a cut between
//     the copies' writes, which go-diskfs makes with no sync between);
//   - a directory entry whose cluster chain is broken (its first cluster
//     free, a link to a free or foreign cluster, fewer clusters than its
//     size) is dropped with its long name: the file was being written when
//     the power failed, and no write that completed before the last sync
//     is undone (every such entry's chain was whole then);
//   - chains longer than their file are cut, clusters no file uses are
//     freed (removed or replaced files, whose clusters go-diskfs does not
//     free, and allocations whose entry did not land);
//   - the ".." entries of directories in the root point to cluster 0
//     (go-diskfs writes the root's cluster), orphaned long-name entries are
//     dropped, and the FSInfo sector gets the true free cluster count.
//
// It reads and writes dev directly, each FAT copy in one write (a storage
// writes only what changed), and says what it wrote: when the FAT or a
// directory changed, the go-diskfs file system must be read again, and
// dev must be synced in any case. It does not sync.
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

	copies := make([][]byte, g.nfats)
	for i := range copies {
		copies[i] = make([]byte, g.fatBytes())
		if _, err := dev.ReadAt(copies[i], g.fatOffset(int64(i))); err != nil {
			return r, fmt.Errorf("reading FAT %d: %w", i+1, err)
		}
	}
	fat := append([]byte(nil), copies[0]...)
	for _, other := range copies[1:] {
		if bytes.Equal(other, copies[0]) {
			continue
		}
		r.Copies = true
		for c := uint32(2); c <= maxCluster; c++ {
			if binary.LittleEndian.Uint32(fat[4*c:])&0x0fffffff == 0 {
				copy(fat[4*c:4*c+4], other[4*c:4*c+4])
			}
		}
	}
	next := func(c uint32) uint32 { return binary.LittleEndian.Uint32(fat[4*c:]) & 0x0fffffff }
	setNext := func(c, v uint32) {
		binary.LittleEndian.PutUint32(fat[4*c:], binary.LittleEndian.Uint32(fat[4*c:])&0xf0000000|v)
	}
	inRange := func(c uint32) bool { return c >= 2 && c <= maxCluster }
	used := make([]bool, maxCluster+1)
	// follow returns up to max clusters of the chain from c (max 0: to its
	// end) and whether the chain is whole that far: every link to a
	// cluster in range, allocated and no other file's. It marks nothing.
	// seen[c] == pass: c is on the chain this pass of follow has taken (a
	// stamp per pass, not a map per chain: the ESP is opened at every
	// staging and apply, and a map of a large file's clusters cost more
	// than the rest of the repair).
	seen, pass := make([]uint32, maxCluster+1), uint32(0)
	follow := func(c uint32, max int) ([]uint32, bool) {
		var cs []uint32
		if max > 0 {
			// max comes from a directory entry's size: no more than the
			// volume's clusters.
			cs = make([]uint32, 0, min(max, int(maxCluster)))
		}
		pass++
		for {
			if !inRange(c) || used[c] || seen[c] == pass || next(c) == 0 || next(c) == 0x0ffffff7 {
				return cs, false
			}
			seen[c] = pass
			cs = append(cs, c)
			if max > 0 && len(cs) == max {
				return cs, true
			}
			n := next(c)
			if n >= fatEOC {
				return cs, max == 0
			}
			c = n
		}
	}
	// claim marks cs used and ends the chain at its last cluster.
	claim := func(cs []uint32) {
		for _, c := range cs {
			used[c] = true
		}
		if last := cs[len(cs)-1]; next(last) < fatEOC {
			setNext(last, 0x0fffffff)
			r.FAT = true
		}
	}

	// walk checks the directory whose chain is cs, marking what it holds,
	// and drops the entries whose chains are broken; a directory in the
	// root has its ".." set to 0.
	var walk func(cs []uint32, parentIsRoot bool, depth int) error
	walk = func(cs []uint32, parentIsRoot bool, depth int) error {
		if depth > 64 {
			return errors.New("directories nested too deep")
		}
		self := cs[0]
		buf := make([]byte, int64(len(cs))*clusterSize)
		for i, c := range cs {
			if _, err := dev.ReadAt(buf[int64(i)*clusterSize:int64(i+1)*clusterSize], g.clusterOffset(c)); err != nil {
				return fmt.Errorf("reading directory cluster %d: %w", c, err)
			}
		}
		orig := append([]byte(nil), buf...)
		lfn := -1 // where the long name run before the next entry starts
		drop := func(i int) {
			from := i
			if lfn >= 0 {
				from = lfn
			}
			for j := from; j <= i; j += 32 {
				buf[j] = 0xe5
			}
			r.Entries = true
		}
		var subdirs [][]uint32
		var subInRoot []bool
	entries:
		for i := 0; i+32 <= len(buf); i += 32 {
			e := buf[i : i+32]
			switch {
			case e[0] == 0:
				break entries
			case e[0] == 0xe5:
				lfn = -1
				continue
			case e[11] == 0x0f:
				if e[0]&0x40 != 0 || lfn < 0 {
					lfn = i
				}
				continue
			}
			if lfn >= 0 && !lfnMatches(buf[lfn:i], e[:11]) {
				for j := lfn; j < i; j += 32 {
					buf[j] = 0xe5 // an orphaned long name
				}
				r.Entries, lfn = true, -1
			}
			if e[11]&0x08 != 0 { // the volume label
				lfn = -1
				continue
			}
			first := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
			size := int64(binary.LittleEndian.Uint32(e[28:]))
			switch name := string(e[:11]); {
			case name == ".          ":
			case name == "..         ":
				if parentIsRoot && first != 0 {
					binary.LittleEndian.PutUint16(e[20:], 0)
					binary.LittleEndian.PutUint16(e[26:], 0)
					r.Dirs = true
				}
			case e[11]&0x10 != 0:
				sub, _ := follow(first, 0)
				if len(sub) == 0 || first == self {
					drop(i)
					break
				}
				if ok, err := dirStarts(dev, g, first); err != nil {
					return err
				} else if !ok {
					// Made at the cut: its cluster never got its "."
					// and "..", and holds what it held before.
					drop(i)
					break
				}
				claim(sub) // a directory cut short keeps what it holds
				subdirs, subInRoot = append(subdirs, sub), append(subInRoot, self == g.root)
			case first == 0 && size == 0:
			default:
				need := max(1, int((size+clusterSize-1)/clusterSize))
				fc, ok := follow(first, need)
				if !ok {
					drop(i)
					break
				}
				claim(fc)
			}
			lfn = -1
		}
		if !bytes.Equal(buf, orig) {
			for i, c := range cs {
				b := buf[int64(i)*clusterSize : int64(i+1)*clusterSize]
				if bytes.Equal(b, orig[int64(i)*clusterSize:int64(i+1)*clusterSize]) {
					continue
				}
				if _, err := dev.WriteAt(b, g.clusterOffset(c)); err != nil {
					return fmt.Errorf("writing directory cluster %d: %w", c, err)
				}
			}
		}
		for i, sub := range subdirs {
			if err := walk(sub, subInRoot[i], depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	root, _ := follow(g.root, 0)
	if len(root) == 0 {
		return r, fmt.Errorf("the root directory's cluster %d is not allocated", g.root)
	}
	claim(root)
	if err := walk(root, false, 0); err != nil {
		return r, err
	}

	for c := uint32(2); c <= maxCluster; c++ {
		if !used[c] && next(c) != 0 {
			setNext(c, 0)
			r.FAT = true
		}
	}
	for i, cp := range copies {
		if bytes.Equal(cp, fat) {
			continue
		}
		if _, err := dev.WriteAt(fat, g.fatOffset(int64(i))); err != nil {
			return r, fmt.Errorf("writing FAT %d: %w", i+1, err)
		}
	}
	r.FSInfo, err = writeFSInfo(dev, g, g.countFree(fat, 0, len(fat)), g.firstFree(fat))
	return r, err
}

// dirStarts tells whether the directory cluster c starts as a directory
// does: a "." entry naming c, then a ".." entry. go-diskfs writes a new
// directory's cluster whole, so one that does not holds what the cluster
// held before: the directory was made at a cut, and its cluster's write
// was lost.
func dirStarts(dev Device, g *fatGeometry, c uint32) (bool, error) {
	b := make([]byte, 64)
	if _, err := dev.ReadAt(b, g.clusterOffset(c)); err != nil {
		return false, fmt.Errorf("reading directory cluster %d: %w", c, err)
	}
	self := uint32(binary.LittleEndian.Uint16(b[20:]))<<16 | uint32(binary.LittleEndian.Uint16(b[26:]))
	return string(b[:11]) == ".          " && b[11]&0x10 != 0 && self == c &&
		string(b[32:43]) == "..         " && b[43]&0x10 != 0, nil
}

// lfnMatches tells whether the long-name entries run (in on-disk order)
// belong to the short entry name (11 bytes): their checksums are the
// short name's and their sequence numbers count down to 1.
func lfnMatches(run, name []byte) bool {
	var sum byte
	for _, c := range name {
		sum = (sum>>1 | sum<<7) + c
	}
	n := len(run) / 32
	for k := 0; k < n; k++ {
		e := run[32*k : 32*k+32]
		if e[11] != 0x0f || e[13] != sum || int(e[0]&0x3f) != n-k || (k == 0) != (e[0]&0x40 != 0) {
			return false
		}
	}
	return n > 0
}
