package fat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/diskfs/go-diskfs/backend"
)

// storage adapts a Device to go-diskfs's backend.Storage, and keeps what
// the FAT needs to know of the writes to it: whether anything was written
// since the last sync, what the device holds of the regions of large writes
// (the two copies of the FAT, which go-diskfs rewrites whole at every
// allocation), and the clusters freed behind go-diskfs's back.
type storage struct {
	dev  Device
	size int64
	off  int64

	// written: something was written since the device was last synced.
	written bool
	// shadows holds, by offset, what the device holds where large writes
	// went: the next write there is compared with it, not with a read.
	shadows map[int64][]byte
	// freed are clusters that go-diskfs's table holds as allocated and no
	// file uses (those of removed files, see Volume.remove): every write of a
	// FAT copy marks them free, and go-diskfs never hands them out.
	freed []uint32
	spare []byte       // the shadow a FAT copy had before its last write, reused
	geo   *fatGeometry // read from the boot sector when first needed
	// free is the count of free clusters in the first FAT copy, when
	// freeKnown; fsinfoStale: a FAT copy was written since fixFSInfo.
	free                   int64
	freeKnown, fsinfoStale bool
}

var (
	_ backend.Storage = (*storage)(nil)
	_ Device          = (*storage)(nil)
)

func newStorage(dev Device, size int64) *storage { return &storage{dev: dev, size: size} }

func (s *storage) Stat() (fs.FileInfo, error)              { return nil, backend.ErrNotSuitable }
func (s *storage) Close() error                            { return nil }
func (s *storage) Sys() (*os.File, error)                  { return nil, backend.ErrNotSuitable }
func (s *storage) Writable() (backend.WritableFile, error) { return s, nil }
func (s *storage) Path() string                            { return "" }

func (s *storage) ReadAt(p []byte, off int64) (int, error) { return s.dev.ReadAt(p, off) }

// Sync syncs the device, and notes that nothing is left to sync.
func (s *storage) Sync() error {
	if err := s.dev.Sync(); err != nil {
		return err
	}
	s.written = false
	return nil
}

// WriteAt writes p at off. A large write (a whole FAT copy) leaves out the
// diffBlock blocks the device already holds; a FAT copy gets the freed
// clusters marked free.
func (s *storage) WriteAt(p []byte, off int64) (int, error) {
	s.written = true
	if off < 512 {
		s.geo, s.freeKnown = nil, false // the boot sector may change
	}
	isFAT, fat0 := false, false
	if len(p) >= 16*diffBlock || len(s.freed) > 0 {
		if g, err := s.geometry(); err == nil && g.isFAT(off, len(p)) {
			isFAT, fat0 = true, off == g.fatOffset(0)
			s.fsinfoStale = true
		}
	}
	if len(p) < 16*diffBlock && !isFAT {
		if _, err := s.dev.WriteAt(p, off); err != nil {
			s.forget()
			return 0, err
		}
		s.follow(p, off)
		return len(p), nil
	}
	cur, ok := s.shadows[off]
	if !ok || len(cur) != len(p) {
		cur = make([]byte, len(p))
		if n, _ := s.dev.ReadAt(cur, off); n < len(p) {
			cur = nil // not all readable: written whole
		}
	}
	// next, what the device is to hold, in the spare shadow.
	next := s.spare
	if len(next) != len(p) {
		next = make([]byte, len(p))
	}
	copy(next, p)
	if isFAT {
		for _, c := range s.freed {
			binary.LittleEndian.PutUint32(next[4*c:], binary.LittleEndian.Uint32(next[4*c:])&0xf0000000)
		}
	}
	delete(s.shadows, off)
	if err := writeDiff(s.dev, next, cur, off); err != nil {
		s.forget()
		return 0, err
	}
	s.follow(next, off)
	if fat0 {
		s.countChange(cur, next)
	}
	if s.shadows == nil {
		s.shadows = map[int64][]byte{}
	}
	s.shadows[off], s.spare = next, cur
	return len(p), nil
}

// release frees clusters on the device that go-diskfs's table holds as
// allocated, in every FAT copy, and marks them free in its later writes of
// the FAT.
func (s *storage) release(cs []uint32) error {
	g, err := s.geometry()
	if err != nil {
		return err
	}
	known, free := s.freeKnown, s.free
	s.freed = append(s.freed, cs...)
	var e [4]byte
	for _, c := range cs {
		if c < 2 || c > g.maxCluster {
			continue
		}
		for i := range g.nfats {
			off := g.fatOffset(i) + 4*int64(c)
			if _, err := s.dev.ReadAt(e[:], off); err != nil {
				return err
			}
			v := binary.LittleEndian.Uint32(e[:])
			if v&0x0fffffff == 0 {
				continue
			}
			if i == 0 {
				free++
			}
			binary.LittleEndian.PutUint32(e[:], v&0xf0000000)
			if _, err := s.WriteAt(e[:], off); err != nil {
				return err
			}
		}
	}
	s.free, s.freeKnown, s.fsinfoStale = free, known, true
	return nil
}

// forget drops what the storage knows of the device's bytes, after a
// write that failed.
func (s *storage) forget() { s.shadows, s.spare, s.freeKnown = nil, nil, false }

// follow copies into the shadows what p, written at off, overlaps.
func (s *storage) follow(p []byte, off int64) {
	for o, sh := range s.shadows {
		if lo, hi := max(o, off), min(o+int64(len(sh)), off+int64(len(p))); lo < hi {
			copy(sh[lo-o:hi-o], p[lo-off:hi-off])
			if s.geo != nil && o == s.geo.fatOffset(0) {
				s.freeKnown = false // counted again when needed
			}
		}
	}
}

// countChange updates the free cluster count for the first FAT copy going
// from cur (nil: not known) to next, block by block.
func (s *storage) countChange(cur, next []byte) {
	if cur == nil || !s.freeKnown {
		s.free, s.freeKnown = s.geo.countFree(next, 0, len(next)), true
		return
	}
	for i := 0; i < len(next); i += diffBlock {
		j := min(i+diffBlock, len(next))
		if !bytes.Equal(cur[i:j], next[i:j]) {
			s.free += s.geo.countFree(next, i, j) - s.geo.countFree(cur, i, j)
		}
	}
}

// freeClusters returns how many clusters the FAT has free.
func (s *storage) freeClusters() (int64, error) {
	if !s.freeKnown {
		g, err := s.geometry()
		if err != nil {
			return 0, err
		}
		fat, err := s.fat()
		if err != nil {
			return 0, err
		}
		s.free, s.freeKnown = g.countFree(fat, 0, len(fat)), true
	}
	return s.free, nil
}

// geometry returns the FAT32's layout, read from its boot sector.
func (s *storage) geometry() (*fatGeometry, error) {
	if s.geo == nil {
		bs := make([]byte, 512)
		if _, err := s.dev.ReadAt(bs, 0); err != nil {
			return nil, fmt.Errorf("reading the boot sector: %w", err)
		}
		g, err := parseGeometry(bs)
		if err != nil {
			return nil, err
		}
		s.geo = g
	}
	return s.geo, nil
}

// fat returns the first copy of the FAT as the device holds it, from its
// shadow if there is one (do not change it).
func (s *storage) fat() ([]byte, error) {
	g, err := s.geometry()
	if err != nil {
		return nil, err
	}
	if sh, ok := s.shadows[g.fatOffset(0)]; ok && int64(len(sh)) == g.fatBytes() {
		return sh, nil
	}
	b := make([]byte, g.fatBytes())
	if _, err := s.dev.ReadAt(b, g.fatOffset(0)); err != nil {
		return nil, fmt.Errorf("reading the FAT: %w", err)
	}
	return b, nil
}

// fixFSInfo writes the FSInfo sector's free cluster count and next free
// cluster from the FAT, when the FAT was written since it last did and
// they differ: go-diskfs writes the counts it read at every allocation,
// never updated.
func (s *storage) fixFSInfo() error {
	if !s.fsinfoStale {
		return nil
	}
	g, err := s.geometry()
	if err != nil {
		return err
	}
	fat, err := s.fat()
	if err != nil {
		return err
	}
	free, err := s.freeClusters()
	if err != nil {
		return err
	}
	if _, err := writeFSInfo(s, g, free, g.firstFree(fat)); err != nil {
		return err
	}
	s.fsinfoStale = false
	return nil
}

// diffBlock is the unit in which large writes are compared.
const diffBlock = 4096

// writeDiff writes p at off, leaving out the diffBlock blocks in which it
// is the same as cur, what the device holds there; all of p when cur is
// nil.
func writeDiff(dev Device, p, cur []byte, off int64) error {
	if cur == nil {
		_, err := dev.WriteAt(p, off)
		return err
	}
	for i := 0; i < len(p); {
		if bytes.Equal(p[i:min(i+diffBlock, len(p))], cur[i:min(i+diffBlock, len(p))]) {
			i += diffBlock
			continue
		}
		j := i + diffBlock
		for j < len(p) && !bytes.Equal(p[j:min(j+diffBlock, len(p))], cur[j:min(j+diffBlock, len(p))]) {
			j += diffBlock
		}
		j = min(j, len(p))
		if _, err := dev.WriteAt(p[i:j], off+int64(i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func (s *storage) Read(p []byte) (int, error) {
	n, err := s.dev.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}

func (s *storage) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative offset")
	}
	s.off = offset
	return offset, nil
}

// fatGeometry is where a FAT32's parts lie, from its boot sector.
type fatGeometry struct {
	bps, spc, reserved, nfats, fatSectors int64
	root                                  uint32 // the root directory's first cluster
	maxCluster                            uint32 // the last data cluster (they are numbered from 2)
	fsinfo, backup                        int64  // sectors of FSInfo and of the backup boot sector
}

func parseGeometry(bs []byte) (*fatGeometry, error) {
	le16 := func(off int) int64 { return int64(binary.LittleEndian.Uint16(bs[off:])) }
	le32 := func(off int) int64 { return int64(binary.LittleEndian.Uint32(bs[off:])) }
	g := &fatGeometry{
		bps: le16(11), spc: int64(bs[13]), reserved: le16(14), nfats: int64(bs[16]),
		fatSectors: le32(36), root: uint32(le32(44)), fsinfo: le16(48), backup: le16(50),
	}
	if g.bps < 512 || g.spc == 0 || g.nfats == 0 || g.fatSectors == 0 || binary.LittleEndian.Uint16(bs[510:]) != 0xaa55 {
		return nil, errors.New("not a FAT32 boot sector")
	}
	count := (le32(32) - g.reserved - g.nfats*g.fatSectors) / g.spc
	if count <= 0 || 4*(count+2) > g.fatBytes() {
		return nil, errors.New("not a FAT32 boot sector: the FAT does not fit the clusters")
	}
	g.maxCluster = uint32(count + 1)
	return g, nil
}

func (g *fatGeometry) fatBytes() int64         { return g.fatSectors * g.bps }
func (g *fatGeometry) fatOffset(i int64) int64 { return (g.reserved + i*g.fatSectors) * g.bps }
func (g *fatGeometry) dataStart() int64        { return g.fatOffset(g.nfats) }
func (g *fatGeometry) clusterSize() int64      { return g.spc * g.bps }
func (g *fatGeometry) clusterOffset(c uint32) int64 {
	return g.dataStart() + int64(c-2)*g.clusterSize()
}

// isFAT tells whether a write of n bytes at off is of a whole FAT copy.
func (g *fatGeometry) isFAT(off int64, n int) bool {
	if int64(n) != g.fatBytes() {
		return false
	}
	for i := range g.nfats {
		if off == g.fatOffset(i) {
			return true
		}
	}
	return false
}

// countFree counts the free clusters whose entries lie in fat[lo:hi].
func (g *fatGeometry) countFree(fat []byte, lo, hi int) int64 {
	n := int64(0)
	for c := max(uint32(lo/4), 2); c <= g.maxCluster && int(4*c) < hi; c++ {
		if binary.LittleEndian.Uint32(fat[4*c:])&0x0fffffff == 0 {
			n++
		}
	}
	return n
}

// firstFree returns fat's first free cluster, 0 when none is.
func (g *fatGeometry) firstFree(fat []byte) uint32 {
	for c := uint32(2); c <= g.maxCluster; c++ {
		if binary.LittleEndian.Uint32(fat[4*c:])&0x0fffffff == 0 {
			return c
		}
	}
	return 0
}

// writeFSInfo gives the FSInfo sector, and its copy in the backup boot
// area, the free cluster count and first free cluster, where they differ,
// and says whether it wrote.
func writeFSInfo(dev Device, g *fatGeometry, free int64, first uint32) (bool, error) {
	changed := false
	fi := make([]byte, 512)
	for _, sector := range []int64{g.fsinfo, g.backup + g.fsinfo} {
		if sector == 0 || sector >= g.reserved {
			continue
		}
		if _, err := dev.ReadAt(fi, sector*g.bps); err != nil {
			return changed, fmt.Errorf("reading FSInfo: %w", err)
		}
		if binary.LittleEndian.Uint32(fi) != 0x41615252 {
			continue
		}
		if binary.LittleEndian.Uint32(fi[488:]) == uint32(free) && binary.LittleEndian.Uint32(fi[492:]) == first {
			continue
		}
		binary.LittleEndian.PutUint32(fi[488:], uint32(free))
		binary.LittleEndian.PutUint32(fi[492:], first)
		if _, err := dev.WriteAt(fi, sector*g.bps); err != nil {
			return changed, fmt.Errorf("writing FSInfo: %w", err)
		}
		changed = true
	}
	return changed, nil
}
