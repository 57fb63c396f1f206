// make unit runs the campaign; make qemu-test (go test -tags vm
// ./qemu-tests/...) would run it a second time.
//go:build !vm

package crashstate_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/crashstate"
	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
	"github.com/stagehand-dev/stagehand/stage"
)

var (
	seed     = flag.Uint64("crash.seed", 1, "seed of the random subsets and tears")
	large    = flag.Bool("crash.large", false, "the large campaign (make crash-campaign)")
	prefixes = flag.Int("crash.prefixes", 2, "prefixes per epoch segment (2: the flush points only)")
	subsets  = flag.Int("crash.subsets", 4, "random subsets per epoch segment")
	torn     = flag.Int("crash.torn", 4, "torn writes per epoch segment")
	keep     = flag.String("crash.keep", "", "save the failing states in this directory (regression inputs, testdata/regress)")
)

// scenario is one recorded run: prepare makes the machine (not recorded),
// run is what the disk sees.
type scenario struct {
	name string
	// open names the failures the bounded campaign does not run yet
	// (the large one does): fixed, they go.
	open    string
	prepare func(t *testing.T) *applytest.Machine
	run     func(t *testing.T, m *applytest.Machine)
	// readOnlyVars: firmware that takes no variable writes at run time,
	// in the run and in the states' boots.
	readOnlyVars bool
}

var scenarios = []scenario{
	{"staging", "", func(t *testing.T) *applytest.Machine { return applytest.NewDisk(t, "v1") },
		func(t *testing.T, m *applytest.Machine) { m.V2Kernel, m.V2Initrd = m.StageVersion("v2") }, false},
	{"cancel", "", applytestNew, func(t *testing.T, m *applytest.Machine) {
		if _, err := stage.Cancel(context.Background(), m.Img, m.Now); err != nil {
			t.Fatal(err)
		}
	}, false},
	{"apply and confirm", "", applytestNew, func(t *testing.T, m *applytest.Machine) { m.Settle(true) }, false},
	{"failed trial, rolled back", "", applytestNew, func(t *testing.T, m *applytest.Machine) { m.Settle(false) }, false},
	{"stager rollback", "", func(t *testing.T) *applytest.Machine {
		m := applytest.New(t)
		m.Settle(true)
		return m
	}, func(t *testing.T, m *applytest.Machine) {
		d := m.Open(meta.SlotB)
		if _, err := apply.Rollback(context.Background(), &d.Env); err != nil {
			t.Fatal(err)
		}
		d.Close()
		m.Settle(true)
	}, false},
	// A slot confirmed after a kexec (firmware start pending) that the
	// firmware cannot start at the first cold boot: slot a's prestage
	// rolls it back.
	{"pending, refused at the cold boot", "", func(t *testing.T) *applytest.Machine {
		m := applytest.New(t)
		m.Firmware()
		m.Prestage(meta.SlotA) // kexec into b
		m.Prestage(meta.SlotB)
		if _, err := m.Confirm(meta.SlotB); err != nil {
			t.Fatal(err)
		}
		return m
	}, func(t *testing.T, m *applytest.Machine) {
		m.Firmware() // b, counted, refused: the loader returns
		if s := m.Firmware(); s != meta.SlotA {
			t.Fatalf("the loader's second start boots %s", s)
		}
		m.Prestage(meta.SlotA)
		m.Settle(true)
	}, false},
	// Firmware without runtime variable writes: the trial armed by its
	// counted entry as the default, confirmed after the kexec, blessed at
	// the first firmware start.
	{"no variable writes, apply and confirm", "", func(t *testing.T) *applytest.Machine {
		m := applytest.New(t)
		m.ReadOnlyVars = true
		return m
	}, func(t *testing.T, m *applytest.Machine) { m.Settle(true) }, true},
	{"no variable writes, failed trial", "", func(t *testing.T) *applytest.Machine {
		m := applytest.New(t)
		m.ReadOnlyVars = true
		return m
	}, func(t *testing.T, m *applytest.Machine) { m.Settle(false) }, true},
}

func applytestNew(t *testing.T) *applytest.Machine { return applytest.New(t) }

// TestCampaign records each scenario on the simulated machine, generates
// its crash states and boots every one: none may fail. The bounded
// campaign runs in make test; -crash.large (make crash-campaign) makes
// many more states.
func TestCampaign(t *testing.T) {
	o := crashstate.Options{Seed: *seed, Prefixes: *prefixes, Subsets: *subsets, Torn: *torn}
	if *large {
		o = crashstate.Options{Seed: *seed, Prefixes: 100, Subsets: 80, Torn: 60}
	}
	t.Logf("seed %d (-crash.seed to repeat)", o.Seed)
	for _, sc := range scenarios {
		if sc.open != "" && !*large {
			t.Logf("%s: not in the bounded campaign until fixed: %s (make crash-campaign runs it)", sc.name, sc.open)
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			start := time.Now()
			m := sc.prepare(t)
			base := filepath.Join(t.TempDir(), "base.img")
			applytest.CopyImage(t, m.Img, base)
			r, err := crashstate.Start(m.Img, string(m.Vars))
			if err != nil {
				t.Fatal(err)
			}
			sc.run(t, m)
			rec, err := r.Stop()
			if err != nil {
				t.Fatal(err)
			}
			v1k, v1i := m.Inputs("v1")
			versions := map[string]crashstate.Files{"v1": crashstate.FilesOf(read(t, v1k), read(t, v1i))}
			if m.V2Kernel != nil {
				versions["v2"] = crashstate.FilesOf(m.V2Kernel, m.V2Initrd)
			}
			eps := crashstate.Epochs(rec)
			flushes := 0
			for _, ep := range eps {
				if ep.Flushed {
					flushes++
				}
			}
			states := crashstate.Generate(rec, o)
			c := &crashstate.Checker{T: t, Base: base, Rec: rec, Inputs: m.Dir, Versions: versions, Name: sc.name, Keep: *keep, ReadOnlyVars: sc.readOnlyVars}
			fails := c.Check(states)
			t.Logf("%s: %d entries, %d flushes, %d epochs, %d EFI variable states, %d crash states checked, %d failed (%s)",
				sc.name, len(rec.Entries), flushes, len(eps), len(rec.Vars), len(states), len(fails), time.Since(start).Round(time.Millisecond))
			for i, f := range fails {
				if i < 5 {
					t.Errorf("epoch %d, variables %d, %s of %d writes: %s\n%s", f.State.Epoch, f.State.VarIndex, f.State.Kind, len(f.State.Writes), f.Err, f.Log)
				} else {
					t.Errorf("epoch %d, variables %d, %s of %d writes: %s", f.State.Epoch, f.State.VarIndex, f.State.Kind, len(f.State.Writes), f.Err)
				}
			}
		})
	}
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckerFails: the checker passes an untouched machine and fails one
// whose META copies are both overwritten, one whose ESP lost its boot
// sector and FAT, and one whose first FAT copy (the one the firmware
// reads) is zeroed but for its first sector, which stagehand's repair
// would put right from the second.
func TestCheckerFails(t *testing.T) {
	m := applytest.NewDisk(t, "v1")
	base := filepath.Join(t.TempDir(), "base.img")
	applytest.CopyImage(t, m.Img, base)
	vars, err := crashstate.ReadVars(string(m.Vars))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := disk.Open(base, false)
	if err != nil {
		t.Fatal(err)
	}
	mr, _ := dk.META()
	esp, _ := dk.Find(disk.LabelESP)
	dk.Close()
	junk := func(off, n int64) []writelog.Entry {
		return []writelog.Entry{{Sector: uint64(off / crashstate.SectorSize), NrSectors: uint64(n / crashstate.SectorSize), Data: bytes.Repeat([]byte{0x5a}, int(n))}}
	}
	k, i := m.Inputs("v1")
	c := &crashstate.Checker{T: t, Base: base, Rec: &crashstate.Recording{Vars: []crashstate.Vars{vars}}, Inputs: m.Dir,
		Versions: map[string]crashstate.Files{"v1": crashstate.FilesOf(read(t, k), read(t, i))}}
	// The first FAT zeroed: stagehand's repair takes the second copy's
	// entries, the firmware (which reads the first) finds no file.
	bs := make([]byte, 512)
	if f, err := os.Open(base); err != nil {
		t.Fatal(err)
	} else {
		f.ReadAt(bs, esp.Offset)
		f.Close()
	}
	fat1 := esp.Offset + int64(binary.LittleEndian.Uint16(bs[14:]))*512
	fatBytes := int64(binary.LittleEndian.Uint32(bs[36:])) * 512
	zero := []writelog.Entry{{Sector: uint64(fat1/crashstate.SectorSize) + 1, NrSectors: uint64(fatBytes/crashstate.SectorSize) - 1, Data: make([]byte, fatBytes-512)}}
	fails := c.Check([]crashstate.State{
		{Kind: "untouched"},
		{Kind: "META overwritten", Writes: junk(mr.Offset, mr.Size)},
		{Kind: "ESP overwritten", Writes: junk(esp.Offset, 1<<20)},
		{Kind: "first FAT zeroed", Writes: zero},
	})
	if len(fails) != 3 || fails[0].State.Kind != "META overwritten" || fails[1].State.Kind != "ESP overwritten" || fails[2].State.Kind != "first FAT zeroed" {
		for _, f := range fails {
			t.Logf("%s: %s", f.State.Kind, f.Err)
		}
		t.Fatalf("%d failures, want the two overwritten states and the zeroed first FAT", len(fails))
	}
	for _, f := range fails {
		t.Logf("%s: %s", f.State.Kind, f.Err)
	}
}
