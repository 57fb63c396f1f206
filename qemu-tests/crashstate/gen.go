package crashstate

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
)

// The crash model: a flush makes durable every write that completed before
// it; the writes of an epoch (between two flushes) that were issued before
// the power failed may each have landed or not, in any order; a write in
// flight lands in any subset of its 512-byte sectors, and a sector is
// atomic. An EFI variable change is atomic and durable when it returns
// (the firmware's variable store commits it), so the variables are those
// of the moment the power failed, and only writes issued before that
// moment can have landed.

// Options bound the states generated per epoch segment (an epoch cut by
// EFI variable changes).
type Options struct {
	Seed      uint64 // seeds the random subsets and tears
	Prefixes  int    // at most this many prefixes (evenly spread, first and last kept)
	Subsets   int    // random subsets, applied in random order
	Torn      int    // random prefixes whose next write is torn
	MaxStates int    // stop after this many distinct states (0: no bound)
}

// State is one image a power cut could leave: the base image with every
// epoch before Epoch applied, then Writes (in order), with the EFI
// variables Vars[VarIndex].
type State struct {
	Epoch    int // 0-based; flushes before it are durable
	VarIndex int
	Kind     string // "prefix N", "subset", "torn"
	Writes   []writelog.Entry
	Hash     [32]byte
}

// Epoch is the writes and variable changes between two flushes.
type Epoch struct {
	Items []writelog.Entry // writes, discards and efivar marks, in order
	// Flushed tells whether a flush ended the epoch (the last one may
	// end with the recording instead).
	Flushed bool
}

// Epochs splits a recording at its flushes. A FLUSH entry carrying data
// is its write, then the flush.
func Epochs(r *Recording) []Epoch {
	var es []Epoch
	cur := Epoch{}
	for _, e := range r.Entries {
		if e.Flags&writelog.Flush != 0 {
			if len(e.Data) > 0 {
				w := e
				w.Flags &^= writelog.Flush
				cur.Items = append(cur.Items, w)
			}
			cur.Flushed = true
			es = append(es, cur)
			cur = Epoch{}
			continue
		}
		cur.Items = append(cur.Items, e)
	}
	if len(cur.Items) > 0 {
		es = append(es, cur)
	}
	return es
}

// VarMark parses an efivar MARK entry's index.
func VarMark(e writelog.Entry) (int, bool) {
	if e.Flags&writelog.Mark == 0 || !strings.HasPrefix(e.Mark, MarkPrefix) {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(e.Mark, MarkPrefix))
	return n, err == nil
}

// segment is a span of an epoch during which the variables were one
// snapshot: a cut in it leaves those variables and any subset of writes
// issued before its end.
type segment struct {
	vars   int
	writes []writelog.Entry
}

func segments(ep Epoch, vars int) ([]segment, int) {
	var writes []writelog.Entry
	segs := []segment{}
	for _, it := range ep.Items {
		if n, ok := VarMark(it); ok {
			segs = append(segs, segment{vars: vars, writes: writes})
			vars = n
			continue
		}
		if it.Flags&writelog.Mark != 0 {
			continue
		}
		writes = append(writes, it)
	}
	return append(segs, segment{vars: vars, writes: writes}), vars
}

// Generate makes the crash states of a recording, deduplicated by content:
// for each epoch and each span of it with one set of EFI variables, the
// prefixes of the writes issued so far, random subsets of them in random
// order, and prefixes followed by a torn write. The state at every flush
// point is among them (the last epoch's full prefix, and the next one's
// empty prefix).
func Generate(r *Recording, o Options) []State {
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	seen := map[[32]byte]bool{}
	var out []State
	add := func(epoch, vars int, kind string, ws []writelog.Entry) bool {
		h := sha256.New()
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(epoch))
		h.Write(b[:])
		h.Write([]byte(r.Vars[vars].key()))
		for _, w := range ws {
			fmt.Fprintf(h, "|%d,%d,%d,", w.Sector, w.NrSectors, w.Flags)
			h.Write(w.Data)
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		if seen[sum] {
			return true
		}
		seen[sum] = true
		out = append(out, State{Epoch: epoch, VarIndex: vars, Kind: kind, Writes: ws, Hash: sum})
		return o.MaxStates == 0 || len(out) < o.MaxStates
	}
	vars := 0
	for k, ep := range Epochs(r) {
		var segs []segment
		segs, vars = segments(ep, vars)
		for _, s := range segs {
			n := len(s.writes)
			for _, p := range spread(n+1, o.Prefixes) {
				if !add(k, s.vars, "prefix", s.writes[:p]) {
					return out
				}
			}
			if n == 0 {
				continue
			}
			for range o.Subsets {
				var ws []writelog.Entry
				for _, i := range rng.Perm(n) {
					if rng.IntN(2) == 0 {
						ws = append(ws, s.writes[i])
					}
				}
				if !add(k, s.vars, "subset", ws) {
					return out
				}
			}
			for range o.Torn {
				p := rng.IntN(n)
				ws := append(append([]writelog.Entry(nil), s.writes[:p]...), tear(rng, s.writes[p])...)
				if !add(k, s.vars, "torn", ws) {
					return out
				}
			}
		}
	}
	return out
}

// spread picks at most max of 0..n-1, evenly, keeping both ends.
func spread(n, max int) []int {
	if max <= 0 || n <= max {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := make([]int, 0, max)
	for i := range max {
		idx = append(idx, i*(n-1)/(max-1))
	}
	return idx
}

// tear cuts a write into up to 8 runs of whole sectors and keeps a random
// subset of them (a discard is torn the same way).
func tear(rng *rand.Rand, w writelog.Entry) []writelog.Entry {
	n := int(w.NrSectors)
	if n == 0 {
		return nil
	}
	cuts := map[int]bool{0: true, n: true}
	for range min(7, n-1) {
		cuts[1+rng.IntN(n-1)] = true
	}
	var bounds []int
	for i := 0; i <= n; i++ {
		if cuts[i] {
			bounds = append(bounds, i)
		}
	}
	var out []writelog.Entry
	for i := 0; i+1 < len(bounds); i++ {
		if rng.IntN(2) == 0 {
			continue
		}
		a, b := bounds[i], bounds[i+1]
		p := writelog.Entry{Sector: w.Sector + uint64(a), NrSectors: uint64(b - a), Flags: w.Flags}
		if w.Data != nil {
			p.Data = w.Data[a*SectorSize : b*SectorSize]
		}
		out = append(out, p)
	}
	return out
}

// Apply writes entries onto the image file f: writes with their data,
// discards as holes.
func Apply(f *os.File, ws []writelog.Entry) error {
	for _, w := range ws {
		off := int64(w.Sector) * SectorSize
		switch {
		case w.Flags&writelog.Mark != 0:
		case w.Flags&writelog.Discard != 0:
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(w.NrSectors)*SectorSize); err != nil {
				return fmt.Errorf("replaying a discard at sector %d: %w", w.Sector, os.NewSyscallError("fallocate", err))
			}
		case len(w.Data) > 0:
			if _, err := f.WriteAt(w.Data, off); err != nil {
				return fmt.Errorf("replaying a write at sector %d: %w", w.Sector, err)
			}
		}
	}
	return nil
}

// Writes is the epoch's writes and discards without its marks.
func (ep Epoch) Writes() []writelog.Entry {
	var ws []writelog.Entry
	for _, it := range ep.Items {
		if it.Flags&writelog.Mark == 0 {
			ws = append(ws, it)
		}
	}
	return ws
}
