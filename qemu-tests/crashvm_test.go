//go:build vm

package qemutests

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/crashstate"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/qemu-tests/writelog"
	"github.com/stagehand-dev/stagehand/stage"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// crashVMLarge: make crash-campaign's run of TestCrashStatesVM, more
// states of the recording checked and every epoch's worst one booted; make
// qemu-test checks the flush points and one random subset and torn write
// per epoch segment, and boots one state.
var crashVMLarge = flag.Bool("crash.vmlarge", false, "check more crash states of the VM recording and boot every epoch's worst case (make crash-campaign)")

// TestCrashStatesVM records what the virtual disk sees while a real VM
// (OVMF, systemd-boot, Debian kernels) applies v2, kexecs into it and
// confirms it: QEMU's blklogwrites driver under the virtio disk, its write
// cache on, the VM ended by SIGKILL. The log is read (writelog), the
// crash states of every epoch generated from it (crashstate: prefixes,
// seeded subsets, torn writes) and each checked on the simulated machine;
// some are then booted for real until they settle (one here; make
// crash-campaign, -crash.vmlarge, boots every epoch's worst case).
//
// The EFI variables are not in the disk's log: the apply sets
// LoaderEntryOneShot after its ESP sync and before the first META write
// of its trial commit (apply/flow.go); the confirm, after a kexec, leaves
// it set (firmware start pending, apply/pending.go). The recording places
// the change there, found from META's content as the log replays; the
// checker's boots, and the real ones, go on to the firmware start that
// completes the blessing.
func TestCrashStatesVM(t *testing.T) {
	u := newUpgrade(t, "", "", "confirm")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	applytest.CopyImage(t, u.img, base)
	logPath := filepath.Join(dir, "writes.log")
	m, err := vm.New(vm.Config{Dir: filepath.Join(dir, "vm"), Disk: u.img, WriteLog: logPath})
	if err != nil {
		t.Fatal(err)
	}
	varsStart := filepath.Join(dir, "OVMF_VARS.start.fd")
	applytest.CopyImage(t, m.Vars(), varsStart)
	r := start(t, m)
	expect(t, r, "the trial commit", bootTimeout, toTrial)
	varsTrial := filepath.Join(dir, "OVMF_VARS.trial.fd") // boot-once set
	applytest.CopyImage(t, m.Vars(), varsTrial)
	expect(t, r, "the confirm", bootTimeout, confirmedLine)
	if err := r.Kill(); err != nil { // SIGKILL: no flush QEMU would add at a clean quit
		t.Fatal(err)
	}
	vmTime := r.Elapsed()

	rec := vmRecording(t, logPath, base)
	eps := crashstate.Epochs(rec)
	flushes := 0
	for _, ep := range eps {
		if ep.Flushed {
			flushes++
		}
	}
	o, boots := crashstate.Options{Seed: 1, Prefixes: 2, Subsets: 1, Torn: 1}, 1
	if *crashVMLarge {
		o, boots = crashstate.Options{Seed: 1, Prefixes: 6, Subsets: 6, Torn: 6}, 0
	}
	states := crashstate.Generate(rec, o)
	k1, k2 := kernel(t, "cloud"), kernel(t, "generic")
	versions := map[string]crashstate.Files{
		"v1": crashstate.FilesOf(readFile(t, k1.Vmlinuz), readFile(t, slotInitramfs(t, "cloud", "v1"))),
		"v2": crashstate.FilesOf(readFile(t, k2.Vmlinuz), readFile(t, slotInitramfs(t, "generic", "v2"))),
	}
	c := &crashstate.Checker{T: t, Base: base, Rec: rec, Versions: versions, Name: "vm apply and confirm"}
	began := time.Now()
	fails := c.Check(states)
	t.Logf("VM apply and confirm: %s of VM time, %d log entries, %d flushes, %d epochs, %d crash states (seed %d) checked in %s, %d failed",
		vmTime.Round(time.Second), len(rec.Entries), flushes, len(eps), len(states), o.Seed, time.Since(began).Round(time.Second), len(fails))
	// The apply's epochs end with its trial commit's second copy (the
	// epoch after the one boot-once was set in); the trial boot's count
	// and the confirm follow.
	applyEnd := trialEpoch(eps) + 1
	var part [2]struct{ epochs, states, failed int }
	for k := range eps {
		part[b2i(k > applyEnd)].epochs++
	}
	for _, st := range states {
		part[b2i(st.Epoch > applyEnd)].states++
	}
	for _, f := range fails {
		part[b2i(f.State.Epoch > applyEnd)].failed++
	}
	t.Logf("VM apply: %d epochs, %d states checked, %d failed; VM trial boot and confirm: %d epochs, %d states checked, %d failed",
		part[0].epochs, part[0].states, part[0].failed, part[1].epochs, part[1].states, part[1].failed)
	for i, f := range fails {
		if i < 5 {
			t.Errorf("epoch %d, variables %d, %s of %d writes: %s\n%s", f.State.Epoch, f.State.VarIndex, f.State.Kind, len(f.State.Writes), f.Err, f.Log)
		}
	}

	// Booted for real: each epoch's worst case, the state that keeps the
	// fewest of the epoch's writes among those that tear one (else
	// reorder, else the flush point), in the epochs that write META or the
	// ESP's directories and FAT (all of them here).
	worst := map[int]crashstate.State{}
	rank := map[string]int{"torn": 3, "subset": 2, "prefix": 1}
	for _, st := range states {
		w, ok := worst[st.Epoch]
		if !ok || rank[st.Kind] > rank[w.Kind] || rank[st.Kind] == rank[w.Kind] && len(st.Writes) < len(w.Writes) {
			worst[st.Epoch] = st
		}
	}
	var pick []crashstate.State
	for k := range eps {
		if st, ok := worst[k]; ok {
			pick = append(pick, st)
		}
	}
	if n := boots; n > 0 && n < len(pick) {
		// The bounded run boots the epochs in the middle of the apply
		// first: the slot's files and entry, the trial commit.
		mid := len(pick) / 3
		pick = pick[mid : mid+n]
	}
	var booted [2]int
	for _, st := range pick {
		vars := varsStart
		if st.VarIndex == 1 {
			vars = varsTrial
		}
		img := filepath.Join(dir, fmt.Sprintf("state-%d.img", st.Epoch))
		writeState(t, base, eps, st, img)
		t.Run(fmt.Sprintf("epoch %d %s", st.Epoch, st.Kind), func(t *testing.T) {
			bootState(t, img, vars, k1, k2)
		})
		os.Remove(img)
		booted[b2i(st.Epoch > applyEnd)]++
	}
	t.Logf("VM apply and confirm: %d of %d epochs' worst states booted for real under OVMF and systemd-boot (apply %d, trial boot and confirm %d)",
		booted[0]+booted[1], len(eps), booted[0], booted[1])
}

// trialEpoch is the epoch in which the recording's EFI variables change
// first (boot-once set, the trial commit's first copy written).
func trialEpoch(eps []crashstate.Epoch) int {
	for k, ep := range eps {
		for _, it := range ep.Items {
			if n, ok := crashstate.VarMark(it); ok && n == 1 {
				return k
			}
		}
	}
	return len(eps)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// vmRecording reads the VM's write log and places the EFI variable
// changes in it (see TestCrashStatesVM).
func vmRecording(t *testing.T, logPath, base string) *crashstate.Recording {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	l, err := writelog.Read(f, fi.Size())
	if err != nil {
		t.Fatalf("the VM's write log: %v", err)
	}
	var metaFrom, metaTo uint64
	withPartition(t, base, "META", false, func(r *disk.Region) {
		metaFrom, metaTo = uint64(r.Offset/crashstate.SectorSize), uint64((r.Offset+r.Size)/crashstate.SectorSize)
	})
	replica := filepath.Join(t.TempDir(), "replica.img")
	applytest.CopyImage(t, base, replica)
	rf, err := os.OpenFile(replica, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	// set: the entry index before which boot-once is set (the trial
	// commit's epoch); confirmed: the confirm's; epochMeta: the first
	// META write since the last flush.
	set, confirmed, epochMeta := -1, -1, -1
	for i, e := range l.Entries {
		if e.Flags&writelog.Flush != 0 {
			epochMeta = -1
		}
		if e.Flags&(writelog.Mark|writelog.Discard) != 0 || len(e.Data) == 0 {
			continue
		}
		if err := crashstate.Apply(rf, []writelog.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if e.Sector+e.NrSectors <= metaFrom || e.Sector >= metaTo {
			continue
		}
		if epochMeta < 0 {
			epochMeta = i
		}
		st, err := stage.ReadStatus(context.Background(), replica)
		if err != nil {
			continue // a copy half written: the other still reads, or the next write completes it
		}
		sl := st.Slots
		if set < 0 && sl.Phase == meta.PhaseTrial {
			set = epochMeta
		}
		if set >= 0 && confirmed < 0 && sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotB && sl.Pending == meta.SlotB {
			confirmed = epochMeta
		}
	}
	if set < 0 || confirmed < 0 {
		t.Fatalf("the write log shows no trial commit (%d) or no confirm of b, firmware start pending (%d): the run did not apply and confirm", set, confirmed)
	}
	vd := efivar.Dir(t.TempDir())
	v0, err := crashstate.ReadVars(string(vd))
	if err != nil {
		t.Fatal(err)
	}
	const nv = efivar.NonVolatile | efivar.BootServiceAccess | efivar.RuntimeAccess
	if err := efivar.SetString(vd, systemdboot.OneShotVar, efivar.LoaderVendor, nv, systemdboot.EntryPattern(meta.SlotB)); err != nil {
		t.Fatal(err)
	}
	v1, err := crashstate.ReadVars(string(vd))
	if err != nil {
		t.Fatal(err)
	}
	// A confirm after the kexec leaves boot-once set (firmware start
	// pending): the variables change once, at the trial commit.
	rec := &crashstate.Recording{Vars: []crashstate.Vars{v0, v1}}
	for i, e := range l.Entries {
		if i == set {
			rec.Entries = append(rec.Entries, writelog.Entry{Flags: writelog.Mark, Mark: crashstate.MarkPrefix + "1"})
		}
		rec.Entries = append(rec.Entries, e)
	}
	return rec
}

// writeState makes img the crash state st of the recording's epochs on
// base.
func writeState(t *testing.T, base string, eps []crashstate.Epoch, st crashstate.State, img string) {
	t.Helper()
	applytest.CopyImage(t, base, img)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for k := 0; k < st.Epoch; k++ {
		if err := crashstate.Apply(f, eps[k].Writes()); err != nil {
			t.Fatal(err)
		}
	}
	if err := crashstate.Apply(f, st.Writes); err != nil {
		t.Fatal(err)
	}
}

// bootState powers the machine with the disk img and the firmware
// variables vars on until it settles: the test OS runs v1 in slot a or v2
// in slot b, META idle with that slot active and good, an ESP fsck.fat
// passes.
func bootState(t *testing.T, img, vars string, k1, k2 Kernel) {
	m, err := vm.New(vm.Config{Dir: t.TempDir(), Disk: img, Firmware: vm.Firmware{Code: vm.OVMF.Code, Vars: vars}})
	if err != nil {
		t.Fatal(err)
	}
	for run := 1; run <= maxRuns; run++ {
		r := start(t, m)
		if _, err := r.Expect(context.Background(), settleTimeout, powerDownLine); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if err := r.Wait(poweroffTimeout); err != nil {
			t.Fatalf("run %d: QEMU after power off: %v", run, err)
		}
		con := ansi.ReplaceAllString(r.Console(), "")
		for _, l := range stagerTrouble.FindAllString(con, -1) {
			t.Errorf("run %d: %s", run, l)
		}
		all := testosLine.FindAllStringSubmatch(con, -1)
		if len(all) == 0 {
			t.Fatalf("run %d: the test OS never ran", run)
		}
		last := all[len(all)-1]
		version, release, running := last[1], last[2], meta.Slot(last[3])
		sl := status(t, img).Slots
		if sl.Phase == meta.PhaseTrial && sl.Trial == running || sl.Pending == running {
			continue // on trial, or confirmed after a kexec: the next power-on goes on
		}
		want, k := "v1", k1
		if running == meta.SlotB {
			want, k = "v2", k2
		}
		if sl.Phase != meta.PhaseIdle || sl.Active != running || stateOf(sl, running) != "good" || version != want || release != k.Release {
			t.Fatalf("run %d: the test OS ran %s on %s in slot %s; META %+v", run, version, release, running, sl)
		}
		fsckESP(t, img)
		t.Logf("settled on %s in slot %s after %d run(s)", version, running, run)
		return
	}
	t.Fatalf("not settled after %d runs", maxRuns)
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
