package meta

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/disk/disktest"
)

// contents is what a block holds apart from its generation.
func contents(b *Block) string {
	var sb strings.Builder
	for _, e := range b.Entries() {
		if e.Tag != TagGeneration {
			fmt.Fprintf(&sb, "%02x=%q;", e.Tag, e.Value)
		}
	}
	return sb.String()
}

func commitOn(t *testing.T, dev Device, entries ...Entry) *Store {
	t.Helper()
	s, err := Load(dev, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(mustBlock(t, entries...)); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLoadBlank(t *testing.T) {
	s, err := Load(disktest.NewMem(make([]byte, PartitionSize)), "blank")
	if err != nil {
		t.Fatal(err)
	}
	if s.Generation() != 0 || len(s.Block().Entries()) != 0 || s.Damaged() != "" {
		t.Errorf("blank META: generation %d, %d entries, damaged %q", s.Generation(), len(s.Block().Entries()), s.Damaged())
	}
	for i, c := range s.Copies() {
		if !c.Blank {
			t.Errorf("copy %d not reported blank", i+1)
		}
	}
}

func TestCommitWritesBothCopiesInOrder(t *testing.T) {
	mem := disktest.NewMem(make([]byte, PartitionSize))
	s := commitOn(t, mem, Entry{7, []byte("ref")})
	mem.Reset()
	if err := s.Commit(mustBlock(t, Entry{7, []byte("ref2")})); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, op := range mem.Ops() {
		if op.Sync {
			got = append(got, "sync")
		} else {
			got = append(got, fmt.Sprintf("write %d+%d", op.Off, len(op.Data)))
		}
	}
	// After a commit both copies hold generation 1; copy 1 is taken as the
	// newest, so the stale one to write first is copy 2.
	want := []string{"write 262144+262144", "sync", "write 0+262144", "sync"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("write order (-want, +got):\n%s", diff)
	}
	img := mem.Bytes()
	for i := range 2 {
		entries, err := specDecode(img[i*BlockSize : (i+1)*BlockSize])
		if err != nil {
			t.Fatalf("copy %d fails the spec decoder: %v", i+1, err)
		}
		want := []specEntry{{7, []byte("ref2")}, {0x40, u64(2)}}
		if diff := cmp.Diff(want, entries, cmp.AllowUnexported(specEntry{})); diff != "" {
			t.Errorf("copy %d (-want, +got):\n%s", i+1, diff)
		}
	}
}

func TestNewestGenerationWins(t *testing.T) {
	img := make([]byte, PartitionSize)
	copy(img, specEncode([]specEntry{{7, []byte("old")}, {0x40, u64(4)}}))
	copy(img[BlockSize:], specEncode([]specEntry{{7, []byte("new")}, {0x40, u64(5)}}))
	s, err := Load(disktest.NewMem(img), "test")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Block().Get(7); string(v) != "new" || s.Generation() != 5 {
		t.Errorf("read %q generation %d, want \"new\" generation 5", v, s.Generation())
	}
}

func TestTalosWrittenMETA(t *testing.T) {
	// Talos writes the same copy twice, without a generation.
	one := specEncode([]specEntry{{8, []byte(`{}`)}, {7, []byte("ghcr.io/siderolabs/installer:v1.8.0")}})
	mem := disktest.NewMem(append(bytes.Clone(one), one...))
	s, err := Load(mem, "talos")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Block().Get(7); string(v) != "ghcr.io/siderolabs/installer:v1.8.0" {
		t.Errorf("tag 7 = %q", v)
	}
	// What we write back keeps Talos's tags and still reads as Talos reads
	// it: the first copy alone.
	if err := s.Commit(s.Block()); err != nil {
		t.Fatal(err)
	}
	entries, err := specDecode(mem.Bytes()[:BlockSize])
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].tag != 8 || entries[1].tag != 7 || entries[2].tag != 0x40 {
		t.Errorf("copy 1 after commit: %v", entries)
	}
}

func TestCorruptCopies(t *testing.T) {
	good := disktest.NewMem(make([]byte, PartitionSize))
	commitOn(t, good, Entry{7, []byte("ref")})
	for _, tc := range []struct {
		name    string
		corrupt []int // offsets to flip
		damaged string
		fatal   bool
	}{
		{"copy 1", []int{100}, "copy 1 is corrupt (checksum mismatch", false},
		{"copy 2", []int{BlockSize + 100}, "copy 2 is corrupt (checksum mismatch", false},
		{"copy 1 magic", []int{0}, "copy 1 is corrupt (bad magic", false},
		{"copy 2 magic2", []int{2*BlockSize - 1}, "copy 2 is corrupt (bad magic", false},
		{"both", []int{100, BlockSize + 100}, "", true},
		// Identical copies are checked once (Load): the same damage in both
		// must still be found in both.
		{"both the same", []int{100, BlockSize + 100, 0, BlockSize}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := good.Bytes()
			for _, off := range tc.corrupt {
				img[off] ^= 0x5a
			}
			mem := disktest.NewMem(img)
			s, err := Load(mem, "/dev/test3")
			if tc.name == "both the same" && !bytes.Equal(img[:BlockSize], img[BlockSize:2*BlockSize]) {
				t.Fatal("the two copies differ: the case does not test identical copies")
			}
			if tc.fatal {
				var ce *CorruptError
				if !errors.As(err, &ce) {
					t.Fatalf("Load = %v, want *CorruptError", err)
				}
				if !strings.Contains(err.Error(), "/dev/test3") || !strings.Contains(err.Error(), "copy 1") || !strings.Contains(err.Error(), "copy 2") {
					t.Errorf("error does not name the device and both copies: %v", err)
				}
				if len(mem.Ops()) != 0 {
					t.Error("Load wrote to a corrupt META")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(s.Damaged(), tc.damaged) {
				t.Errorf("Damaged() = %q, want prefix %q", s.Damaged(), tc.damaged)
			}
			if v, _ := s.Block().Get(7); string(v) != "ref" {
				t.Errorf("read %q from the good copy, want ref", v)
			}
			// The next write repairs the corrupt copy, and writes it first.
			if err := s.Commit(s.Block()); err != nil {
				t.Fatal(err)
			}
			bad := tc.corrupt[0] / BlockSize
			if first := mem.Ops()[0]; first.Off != int64(bad*BlockSize) {
				t.Errorf("first write went to offset %d, want the corrupt copy at %d", first.Off, bad*BlockSize)
			}
			again, err := Load(mem, "/dev/test3")
			if err != nil || again.Damaged() != "" {
				t.Errorf("after repair: err %v, damaged %q", err, again.Damaged())
			}
		})
	}
}

func TestTruncatedDevice(t *testing.T) {
	_, err := Load(disktest.NewMem(make([]byte, BlockSize+1000)), "short")
	if err == nil || !strings.Contains(err.Error(), "copy 2") {
		t.Fatalf("Load of a truncated META = %v, want an error about copy 2", err)
	}
}

// keepers are the ways a cut can tear the writes in flight, by sector.
func keepers(r *rand.Rand) map[string]func(op, sector int) bool {
	ks := map[string]func(op, sector int) bool{
		"none":      func(int, int) bool { return false },
		"all":       func(int, int) bool { return true },
		"first":     func(_, s int) bool { return s < 1 },
		"half":      func(_, s int) bool { return s < 256 },
		"almost":    func(_, s int) bool { return s < 511 },
		"last only": func(_, s int) bool { return s == 511 },
		"odd":       func(_, s int) bool { return s%2 == 1 },
	}
	for i := range 4 {
		seed := r.Uint64()
		ks[fmt.Sprintf("random %d", i)] = func(op, s int) bool {
			return rand.New(rand.NewPCG(seed, uint64(op*1000+s))).IntN(2) == 0
		}
	}
	return ks
}

// TestTornCommit cuts power at every step of a Commit, with the write in
// flight torn in many ways, from several starting states: the store must then
// read the old contents or the new, and the next commit must leave both
// copies valid.
func TestTornCommit(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	oldEntries := []Entry{{7, []byte("old-ref")}, {0x41, []byte(`{"x":1}`)}}
	newEntries := []Entry{{7, []byte("new-ref")}, {0x06, []byte("A")}}
	valid := disktest.NewMem(make([]byte, PartitionSize))
	commitOn(t, valid, oldEntries...)
	commitOn(t, valid, oldEntries...) // generation 2
	talos := specEncode([]specEntry{{7, []byte("old-ref")}, {0x41, []byte(`{"x":1}`)}})
	starts := map[string][]byte{
		"blank":          make([]byte, PartitionSize),
		"stagehand":      valid.Bytes(),
		"talos":          append(bytes.Clone(talos), talos...),
		"copy 1 corrupt": valid.Bytes(),
		"copy 2 corrupt": valid.Bytes(),
	}
	starts["copy 1 corrupt"][10] ^= 1
	starts["copy 2 corrupt"][BlockSize+10] ^= 1
	for name, start := range starts {
		t.Run(name, func(t *testing.T) {
			s0, err := Load(disktest.NewMem(start), "test")
			if err != nil {
				t.Fatal(err)
			}
			old := contents(s0.Block())
			mem := disktest.NewMem(start)
			s, _ := Load(mem, "test")
			if err := s.Commit(mustBlock(t, newEntries...)); err != nil {
				t.Fatal(err)
			}
			want := contents(mustBlock(t, newEntries...))
			ops := mem.Ops()
			for k := 0; k <= len(ops); k++ {
				for kname, keep := range keepers(r) {
					img := mem.CutAt(k, keep)
					cut, err := Load(disktest.NewMem(img), "test")
					if err != nil {
						t.Fatalf("cut at op %d (%s): %v", k, kname, err)
					}
					got := contents(cut.Block())
					if got != old && got != want {
						t.Fatalf("cut at op %d (%s): read %s, want old %s or new %s", k, kname, got, old, want)
					}
					if k == len(ops) && got != want {
						t.Fatalf("after the last op the new contents must be read, got %s", got)
					}
					// Every synced step is durable: once the first copy is
					// written and synced, the new contents are what reads.
					if k >= 2 && got != want {
						t.Fatalf("cut at op %d (%s), after the first sync: read old contents", k, kname)
					}
					// The next commit repairs whatever the cut left.
					dev := disktest.NewMem(img)
					cut, _ = Load(dev, "test")
					if err := cut.Commit(cut.Block()); err != nil {
						t.Fatal(err)
					}
					again, err := Load(dev, "test")
					if err != nil || again.Damaged() != "" || contents(again.Block()) != got {
						t.Fatalf("cut at op %d (%s), then commit: err %v, damaged %q", k, kname, err, again.Damaged())
					}
				}
			}
		})
	}
}

// TestCutSequences runs random sequences of commits, each cut at a random
// point and torn at random sectors, and checks after every cut that the
// store reads the state before or after the interrupted commit.
func TestCutSequences(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	img := make([]byte, PartitionSize)
	state := ""
	for i := range 300 {
		mem := disktest.NewMem(img)
		s, err := Load(mem, "test")
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := contents(s.Block()); got != state {
			t.Fatalf("step %d: read %s, want %s", i, got, state)
		}
		b := s.Block()
		switch r.IntN(3) {
		case 0:
			b.Delete(Tag(1 + r.IntN(4)))
		default:
			b.Set(Tag(1+r.IntN(4)), bytes.Repeat([]byte{byte(i)}, r.IntN(2000)))
		}
		if err := s.Commit(b); err != nil {
			t.Fatal(err)
		}
		next := contents(b)
		k := r.IntN(len(mem.Ops()) + 1)
		seed := r.Uint64()
		img = mem.CutAt(k, func(op, sec int) bool { return rand.New(rand.NewPCG(seed, uint64(op<<20|sec))).IntN(3) > 0 })
		cut, err := Load(disktest.NewMem(img), "test")
		if err != nil {
			t.Fatalf("step %d, cut at op %d: %v", i, k, err)
		}
		switch got := contents(cut.Block()); got {
		case next:
			state = next
		case state:
		default:
			t.Fatalf("step %d, cut at op %d: read %s, want %s or %s", i, k, got, state, next)
		}
	}
}

type failingDevice struct {
	*disktest.Mem
	failSync int
}

func (f *failingDevice) Sync() error {
	f.failSync--
	if f.failSync == 0 {
		return errors.New("EIO")
	}
	return f.Mem.Sync()
}

func TestFailedCommitPoisonsStore(t *testing.T) {
	dev := &failingDevice{Mem: disktest.NewMem(make([]byte, PartitionSize)), failSync: 2}
	s, _ := Load(dev, "test")
	if err := s.Commit(mustBlock(t, Entry{7, []byte("a")})); err == nil {
		t.Fatal("commit with a failing sync succeeded")
	}
	if err := s.Commit(mustBlock(t, Entry{7, []byte("b")})); err == nil || !strings.Contains(err.Error(), "load it again") {
		t.Fatalf("commit after a failed one = %v, want a refusal", err)
	}
}

func TestFormat(t *testing.T) {
	img := make([]byte, PartitionSize)
	for i := range img {
		img[i] = byte(i * 7)
	}
	mem := disktest.NewMem(img)
	if _, err := Load(mem, "garbage"); err == nil {
		t.Fatal("garbage loaded")
	}
	if _, err := Format(mem, "garbage"); err != nil {
		t.Fatal(err)
	}
	s, err := Load(mem, "garbage")
	if err != nil || s.Generation() != 1 || len(s.Block().Entries()) != 1 || s.Damaged() != "" {
		t.Fatalf("after Format: err %v, generation %d, damaged %q", err, s.Generation(), s.Damaged())
	}
}
