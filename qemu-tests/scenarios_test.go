//go:build vm

package qemutests

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// More scenarios of the upgrade story on the pre-stage disks of
// prestage_test.go: a trial that hangs under a watchdog, a rollback after
// confirm, a payload corrupted in STAGE, a corrupt META copy. Staging from
// inside the running system is in stageinguest_test.go, the power cuts in
// powercut_test.go.

// watchdogArgs give the machine an Intel 6300ESB watchdog that resets it
// when it fires.
var watchdogArgs = []string{"-device", "i6300esb", "-action", "watchdog=reset"}

// openMETA loads META of img on the host (read-only).
func openMETA(t testing.TB, img string) *meta.Store {
	t.Helper()
	s, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	return s
}

// defaultSlot is the slot loader.conf of img's ESP names as default.
func defaultSlot(t testing.TB, img string) meta.Slot {
	t.Helper()
	var def meta.Slot
	espOf(t, img, false, func(_ *fat.Volume, sb *systemdboot.Loader) {
		var err error
		if def, err = sb.Default(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	return def
}

// patchPartition writes b at off into the partition label of img.
func patchPartition(t testing.TB, img, label string, off int64, b []byte) {
	t.Helper()
	withPartition(t, img, label, true, func(r *disk.Region) {
		if _, err := r.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := r.Sync(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestScenarioWatchdog: v2 arms the i6300esb watchdog (3 s) at every boot
// and hangs without petting it; the watchdog resets the machine (no
// panic). As with a panic, the kexec'd boot spends one try and the
// firmware's boot-once the second; then slot A boots and its prestage
// rolls the trial back.
func TestScenarioWatchdog(t *testing.T) {
	u := newUpgrade(t, "", "status,efivars", "watchdog,hang")
	staged := status(t, u.img).Staged
	u.m = newMachine(t, u.img, watchdogArgs...)
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	armed := regexp.MustCompile(`stagehand-testos: watchdog: armed /dev/watchdog \(([^)]*)\), timeout (\d+) s`)
	hanging := regexp.MustCompile(`stagehand-testos: hanging`)
	firmware := regexp.MustCompile(`BdsDxe: starting`)
	expectTestOS(t, r, "trial boot 1 (kexec)", "v2", u.k2, meta.SlotB)
	got, _ := expect(t, r, "trial boot 1: watchdog", stepTimeout, armed)
	t.Logf("watchdog: %s, timeout %s s", got[1], got[2])
	_, hang1 := expect(t, r, "trial boot 1", stepTimeout, hanging)
	_, reset1 := expect(t, r, "trial boot 1: the watchdog resets the machine", stepTimeout, firmware)
	expect(t, r, "trial boot 2 (boot-once): prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 2 of 2`))
	expectTestOS(t, r, "trial boot 2 (boot-once)", "v2", u.k2, meta.SlotB)
	expect(t, r, "trial boot 2: watchdog", stepTimeout, armed)
	_, hang2 := expect(t, r, "trial boot 2", stepTimeout, hanging)
	_, reset2 := expect(t, r, "trial boot 2: the watchdog resets the machine", stepTimeout, firmware)
	got, _ = expect(t, r, "back on a: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot b\): rolled back: (.*)`))
	t.Logf("v1's prestage: rolled back: %s", got[1])
	expect(t, r, "back on a: prestage", stepTimeout, clearedLine)
	expectTestOS(t, r, "back on a", "v1", u.k1, meta.SlotA)
	expectBackOnA(t, r, `bad\s+v2\s+slot b did not confirm`)
	if n := strings.Count(r.Console(), "Kernel panic"); n != 0 {
		t.Errorf("%d kernel panics: the watchdog, not a panic, was to reset the hung trial", n)
	}
	t.Logf("hang to reset (the firmware starting again): %s and %s; power on to power off %s",
		round(reset1-hang1), round(reset2-hang2), round(r.Elapsed()))

	st := status(t, u.img)
	sl := st.Slots
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.Trial != "" || sl.A.State != "good" ||
		sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm") {
		t.Errorf("META after the rollback: %+v%s", sl, lastReasons(st, 5))
	}
	t.Logf("slot b: %s: %s", sl.B.State, sl.B.Reason)
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+1-1.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	if b := stageBytes(t, u.img, staged.Artifacts); bytes.Count(b, []byte{0}) != len(b) || st.Staged != nil {
		t.Errorf("after the rollback, META's staged record is %+v and %d bytes of the rolled back payload are left in STAGE", st.Staged, len(b)-bytes.Count(b, []byte{0}))
	}
	fsckESP(t, u.img)
}

// clearedLine is prestage's line when it clears a payload META dropped.
var clearedLine = regexp.MustCompile(`stagehand: cleared the dropped payload from STAGE`)

// TestScenarioRollback: v2 is kexec'd into and confirmed; then `stager
// rollback` in v2 makes slot A the default again and the test OS reboots:
// the firmware boots v1 in slot A, whose prestage has nothing to do. META
// keeps both slots good, A active and B previous.
func TestScenarioRollback(t *testing.T) {
	u := newUpgrade(t, "", "status,efivars", "confirm,rollback,reboot")
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	expect(t, r, "stager rollback", stepTimeout, regexp.MustCompile(`stagehand-testos: stager rollback: slot a \(v1\) is the default now`))
	expect(t, r, "stager rollback", stepTimeout, regexp.MustCompile(`stagehand-testos: step rollback: ok`))
	_, rebootAt := expect(t, r, "reboot", stepTimeout, regexp.MustCompile(`stagehand-testos: rebooting`))
	expect(t, r, "v1's prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	v1 := expectTestOS(t, r, "after the rollback", "v1", u.k1, meta.SlotA)
	expectBackOnA(t, r, `good\s+v2`)
	t.Logf("reboot after stager rollback to the test OS v1 in slot a: %s", round(v1-rebootAt))

	st := status(t, u.img)
	sl := st.Slots
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.Previous != meta.SlotB || sl.Trial != "" ||
		sl.A.State != "good" || sl.A.Version != "v1" || sl.B.State != "good" || sl.B.Version != "v2" || st.Staged != nil {
		t.Errorf("META after the rollback: %+v%s", sl, lastReasons(st, 4))
	}
	if last := st.Transitions[len(st.Transitions)-1]; !strings.Contains(last.Reason, "rolled back by stager rollback from slot b to slot a") {
		t.Errorf("last transition: %+v", last)
	}
	// b was confirmed after a kexec and never started by the firmware:
	// its entry was never blessed.
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	if def := defaultSlot(t, u.img); def != meta.SlotA {
		t.Errorf("loader.conf's default is slot %s, want a", def)
	}
	fsckESP(t, u.img)
}

// TestScenarioCorruptPayload: after `stager --image` on the host, bytes in
// the middle of the staged kernel are flipped in STAGE. v1's prestage
// checks the payload against META before writing anything, refuses it,
// records why, clears it from STAGE and boots v1; slot B is never touched.
func TestScenarioCorruptPayload(t *testing.T) {
	u := newUpgrade(t, "", "status", "status")
	staged := status(t, u.img).Staged
	k, ok := payload.Find(staged.Artifacts, payload.Kernel)
	if !ok {
		t.Fatalf("no kernel in the staged payload: %+v", staged.Artifacts)
	}
	flip := make([]byte, 16)
	withPartition(t, u.img, disk.LabelSTAGE, false, func(r *disk.Region) {
		if _, err := r.ReadAt(flip, k.Offset+k.Size/2); err != nil {
			t.Fatal(err)
		}
	})
	for i := range flip {
		flip[i] ^= 0xff
	}
	patchPartition(t, u.img, disk.LabelSTAGE, k.Offset+k.Size/2, flip)
	t.Logf("flipped %d bytes at offset %d of the staged kernel (%d bytes at %d in STAGE)", len(flip), k.Size/2, k.Size, k.Offset)
	entriesBefore := entries(t, u.img)

	r := start(t, u.m)
	got, _ := expect(t, r, "v1's prestage refuses the payload", bootTimeout,
		regexp.MustCompile(`stagehand: staged → idle \(slot \): staged payload refused: (.*)`))
	t.Logf("prestage: staged payload refused: %s", got[1])
	if !strings.Contains(got[1], "sha256 is") || !strings.Contains(got[1], payload.Kernel) {
		t.Errorf("refusal %q does not name the kernel's sha256 mismatch", got[1])
	}
	expect(t, r, "prestage", stepTimeout, regexp.MustCompile(`stagehand: continue: staged payload refused`))
	expect(t, r, "prestage", stepTimeout, clearedLine)
	expectTestOS(t, r, "v1 boots on", "v1", u.k1, meta.SlotA)
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: staged:\s+nothing`))
	powerDown(t, r, "v1")
	if strings.Contains(r.Console(), "kexec") || strings.Contains(r.Console(), "applying") {
		t.Error("the console shows an apply or a kexec")
	}

	st := status(t, u.img)
	sl := st.Slots
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.A.State != "good" || sl.B != (meta.SlotState{}) || st.Staged != nil {
		t.Errorf("META after the refusal: %+v, staged %+v%s", sl, st.Staged, lastReasons(st, 3))
	}
	last := st.Transitions[len(st.Transitions)-1]
	if last.From != meta.PhaseStaged || last.To != meta.PhaseIdle || !strings.Contains(last.Reason, "sha256") {
		t.Errorf("last transition %+v: want staged → idle with the sha256 mismatch", last)
	}
	t.Logf("META's last transition: %s → %s: %s", last.From, last.To, last.Reason)
	if v, ok := openMETA(t, u.img).Block().Get(meta.TagTalosStagedImageRef); ok {
		t.Errorf("Talos's staged image tag 0x07 still holds %q", v)
	}
	if d := cmp.Diff(entriesBefore, entries(t, u.img)); d != "" {
		t.Errorf("entries changed (-before, +after):\n%s", d)
	}
	espOf(t, u.img, false, func(esp *fat.Volume, _ *systemdboot.Loader) {
		if names, err := esp.ReadDir("stagehand"); err != nil || !cmp.Equal(names, []string{"a"}) {
			t.Errorf("the ESP's stagehand/ holds %v (%v), want only a: slot b was written", names, err)
		}
	})
	if b := stageBytes(t, u.img, staged.Artifacts); bytes.Count(b, []byte{0}) != len(b) {
		t.Errorf("STAGE still holds %d non-zero bytes of the refused payload, which META no longer refers to", len(b)-bytes.Count(b, []byte{0}))
	}
	fsckESP(t, u.img)
}

// TestScenarioCorruptMETACopy: with v2 staged, META copy 1 is damaged on
// the host. prestage says so, reads copy 2, applies v2 and kexecs; its
// first write (staged → applying) goes to copy 1 first and repairs it.
func TestScenarioCorruptMETACopy(t *testing.T) {
	u := newUpgrade(t, "", "", "status")
	before := openMETA(t, u.img)
	patchPartition(t, u.img, disk.LabelMETA, 4096, bytes.Repeat([]byte{0xa5}, 64))
	damaged := openMETA(t, u.img)
	if c := damaged.Copies(); c[0].Valid || !c[1].Valid || damaged.Generation() != before.Generation() {
		t.Fatalf("after damaging copy 1 on the host: copies %+v, generation %d (was %d)", c, damaged.Generation(), before.Generation())
	}
	t.Logf("META on the host: %s; copy 2 holds generation %d", damaged.Damaged(), damaged.Generation())

	r := start(t, u.m)
	got, _ := expect(t, r, "v1's prestage reports the damage", bootTimeout,
		regexp.MustCompile(`stagehand: META on (.+?): (copy 1 is corrupt [^;]*); the next write repairs it`))
	t.Logf("prestage: META on %s: %s", got[1], got[2])
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+trial, 1 tries left\s+v2`))
	powerDown(t, r, "v2")
	if strings.Contains(strings.SplitN(r.Console(), "kexec_core: Starting new kernel", 2)[1], "is corrupt") {
		t.Error("v2's prestage or stager status still found a corrupt META copy")
	}

	after := openMETA(t, u.img)
	c := after.Copies()
	if !c[0].Valid || !c[1].Valid || c[0].Blank || c[0].Generation != c[1].Generation || after.Damaged() != "" {
		t.Errorf("META copies after the boot: %+v (damaged: %q), want both valid with the same generation", c, after.Damaged())
	}
	t.Logf("META after the boot: copy 1 generation %d, copy 2 generation %d (was %d before the boot)", c[0].Generation, c[1].Generation, before.Generation())
	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseTrial || sl.Trial != meta.SlotB || sl.TriesLeft != 1 || sl.B.Version != "v2" {
		t.Errorf("META: %+v%s", sl, lastReasons(st, 4))
	}
	fsckESP(t, u.img)
}
