package crashstate

import (
	"bytes"
	"testing"

	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
)

func w(sector uint64, n int, fill byte) writelog.Entry {
	return writelog.Entry{Sector: sector, NrSectors: uint64(n), Data: bytes.Repeat([]byte{fill}, n*SectorSize)}
}

var (
	flush = writelog.Entry{Flags: writelog.Flush}
	mark1 = writelog.Entry{Flags: writelog.Mark, Mark: MarkPrefix + "1"}
)

func TestEpochs(t *testing.T) {
	r := &Recording{Entries: []writelog.Entry{w(0, 1, 1), flush, w(1, 1, 2), mark1, w(2, 1, 3), flush, w(3, 1, 4)}, Vars: []Vars{{}, {"x": {1}}}}
	eps := Epochs(r)
	if len(eps) != 3 || !eps[0].Flushed || !eps[1].Flushed || eps[2].Flushed {
		t.Fatalf("epochs %+v", eps)
	}
	segs, last := segments(eps[1], 0)
	if len(segs) != 2 || segs[0].vars != 0 || len(segs[0].writes) != 1 || segs[1].vars != 1 || len(segs[1].writes) != 2 || last != 1 {
		t.Fatalf("segments of epoch 1: %+v", segs)
	}
}

// TestGenerate: every state's writes are issued before the cut (a write
// after a variable change never pairs with the variables before it), each
// epoch's flush point is there, states are distinct, and the seed repeats.
func TestGenerate(t *testing.T) {
	r := &Recording{Entries: []writelog.Entry{w(0, 4, 1), w(8, 2, 2), flush, w(1, 1, 3), mark1, w(2, 8, 4), w(20, 1, 5), flush}, Vars: []Vars{{}, {"x": {1}}}}
	o := Options{Seed: 7, Prefixes: 10, Subsets: 5, Torn: 5}
	states := Generate(r, o)
	seen := map[[32]byte]bool{}
	full := map[int]bool{}
	for _, st := range states {
		if seen[st.Hash] {
			t.Fatalf("state %+v twice", st)
		}
		seen[st.Hash] = true
		for _, e := range st.Writes {
			if st.VarIndex == 0 && st.Epoch == 1 && e.Sector >= 2 {
				t.Fatalf("epoch 1 with the variables before the change holds a write issued after it: %+v", st)
			}
		}
		if st.Kind == "prefix" && st.VarIndex == 1 && len(st.Writes) == 3 {
			full[st.Epoch] = true
		}
		if st.Kind == "prefix" && st.Epoch == 0 && len(st.Writes) == 2 {
			full[0] = true
		}
	}
	if !full[0] || !full[1] {
		t.Fatalf("flush points missing: %v", full)
	}
	again := Generate(r, o)
	if len(again) != len(states) {
		t.Fatalf("seed %d: %d states, then %d", o.Seed, len(states), len(again))
	}
	for i := range again {
		if again[i].Hash != states[i].Hash {
			t.Fatalf("seed %d: state %d differs between runs", o.Seed, i)
		}
	}
	if n := len(Generate(r, Options{Seed: 7, Prefixes: 10, Subsets: 5, Torn: 5, MaxStates: 3})); n != 3 {
		t.Fatalf("MaxStates 3: %d states", n)
	}
}

func TestTear(t *testing.T) {
	o := Options{Seed: 3}
	r := &Recording{Entries: []writelog.Entry{w(100, 64, 9)}, Vars: []Vars{{}}}
	_ = o
	for seed := uint64(0); seed < 50; seed++ {
		for _, st := range Generate(r, Options{Seed: seed, Torn: 1}) {
			if st.Kind != "torn" {
				continue
			}
			for _, e := range st.Writes {
				if e.Sector < 100 || e.Sector+e.NrSectors > 164 || len(e.Data) != int(e.NrSectors)*SectorSize {
					t.Fatalf("torn piece %d+%d of 100+64", e.Sector, e.NrSectors)
				}
			}
		}
	}
}

func TestSpread(t *testing.T) {
	for _, tc := range []struct{ n, max, want int }{{5, 0, 5}, {5, 10, 5}, {100, 2, 2}, {100, 12, 12}} {
		got := spread(tc.n, tc.max)
		if len(got) != tc.want || got[0] != 0 || got[len(got)-1] != tc.n-1 {
			t.Errorf("spread(%d, %d) = %v", tc.n, tc.max, got)
		}
	}
}
