package apply_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/meta"
)

func recordChecks(m *applytest.Machine, booted meta.Slot, healthy bool, summary string) *apply.CheckOutcome {
	m.T.Helper()
	d := m.Open(booted)
	defer d.Close()
	out, err := apply.RecordChecks(context.Background(), &d.Env, healthy, summary)
	if err != nil {
		m.T.Fatal(err)
	}
	return out
}

// A required check that fails on each try of the trial: each try records
// why, and the rollback after the last names the check.
func TestFailedChecksRollBackWithTheReason(t *testing.T) {
	m := applytest.New(t)
	m.Firmware()
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec {
		t.Fatalf("apply: %+v", d)
	}
	const failed = "required check 50-app failed (exit status 1): app not listening"
	m.Prestage(meta.SlotB) // the kexec'd boot: try 1
	out := recordChecks(m, meta.SlotB, false, failed)
	if !out.Trial || !out.Recorded || out.TriesLeft != apply.DefaultTries-1 {
		t.Fatalf("RecordChecks on try 1: %+v", out)
	}
	if r := m.LastReason(); r != "health checks of slot b (v2) failed, no confirm: "+failed {
		t.Errorf("recorded %q", r)
	}
	if sl := m.Slots(); sl.Phase != meta.PhaseTrial || sl.B.State != "trial" || sl.B.Reason != "health check failed: "+failed {
		t.Errorf("after the failed checks: %+v", sl)
	}
	// The check reboots: boot-once brings slot b once more.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("the reboot after the failed check starts slot %s", s)
	}
	m.Prestage(meta.SlotB)
	if out := recordChecks(m, meta.SlotB, false, failed); out.TriesLeft != 0 {
		t.Fatalf("RecordChecks on try 2: %+v", out)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("after the tries the firmware starts slot %s", s)
	}
	m.Prestage(meta.SlotA)
	sl := m.Slots()
	want := "rolled back: slot b did not confirm: the machine came back to slot a after 2 boot(s) of b (health check failed: " + failed + ")"
	if r := m.LastReason(); r != want {
		t.Errorf("rollback reason\n got %q\nwant %q", r, want)
	}
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "50-app failed") {
		t.Errorf("after the rollback: %+v", sl)
	}
	m.CheckESP()
	// A settled slot's checks write nothing.
	gen := m.Status().Generation
	if out := recordChecks(m, meta.SlotA, false, failed); out.Trial || out.Recorded {
		t.Errorf("RecordChecks on a confirmed slot: %+v", out)
	}
	if g := m.Status().Generation; g != gen {
		t.Errorf("RecordChecks on a confirmed slot wrote META (generation %d → %d)", gen, g)
	}
}

// Passing required checks with a failed wanted one: the warning is
// recorded, and the confirm goes on.
func TestWantedWarningRecordedThenConfirmed(t *testing.T) {
	m := applytest.New(t)
	m.Firmware()
	m.Prestage(meta.SlotA)
	m.Prestage(meta.SlotB)
	const warn = "wanted check 50-ntp failed (exit status 1): clock not synchronized"
	if out := recordChecks(m, meta.SlotB, true, warn); !out.Recorded {
		t.Fatalf("RecordChecks: %+v", out)
	}
	res, err := m.Confirm(meta.SlotB)
	if err != nil || !res.Changed {
		t.Fatalf("confirm: %+v, %v", res, err)
	}
	st := m.Status()
	tr := st.Transitions
	if n := len(tr); n < 2 || tr[n-2].Reason != "health checks of slot b (v2) passed: "+warn || !strings.HasPrefix(tr[n-1].Reason, "confirmed slot b") {
		t.Errorf("last transitions: %s", lastTwo(tr))
	}
	if sl := st.Slots; sl.B.State != "good" || sl.B.Reason != "" || sl.Active != meta.SlotB {
		t.Errorf("after confirm: %+v", sl)
	}
}

func lastTwo(tr []meta.Transition) string {
	var b strings.Builder
	for _, x := range tr[max(0, len(tr)-2):] {
		b.WriteString("\n  " + x.Reason)
	}
	return b.String()
}
