package apply_test

import (
	"context"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestCutDuringApply cuts the power before every change the apply makes to
// the ESP and the EFI variables (its META commits sit between them; on
// GRUB, each sector of a grubenv write), then boots on: the machine always
// ends on v1 or v2, consistent, whether v2 confirms or never does.
func TestCutDuringApply(t *testing.T) { onEach(t, bootloaders, testCutDuringApply) }

func testCutDuringApply(t *testing.T, bootloader string) {
	for _, confirm := range []bool{true, false} {
		for at := 1; ; at++ {
			m := applytest.NewOn(t, bootloader)
			cut := m.CutRun(meta.SlotA, at, func(d *apply.Disk) {
				if _, err := apply.Boot(context.Background(), &d.Env); err != nil {
					t.Fatal(err)
				}
			})
			end := m.Settle(confirm)
			want := meta.SlotA
			if confirm {
				want = meta.SlotB
			}
			if end != want {
				t.Fatalf("cut %d (confirm %v): settled on %s, want %s", at, confirm, end, want)
			}
			m.CheckSettled(end)
			if !cut {
				t.Logf("confirm %v: %d cut points, all settle on %s", confirm, at-1, want)
				break
			}
		}
	}
}

// TestCutDuringConfirm cuts before every change confirm makes, its META
// commit's writes and syncs included: once the commit is durable (META
// idle on b) the next boot finishes the confirm, on b; before, the trial
// goes on as if confirm had not run, and a trial OS that does not confirm
// again is rolled back to a.
func TestCutDuringConfirm(t *testing.T) { onEach(t, bootloaders, testCutDuringConfirm) }

func testCutDuringConfirm(t *testing.T, bootloader string) {
	for at := 1; ; at++ {
		m := applytest.NewOn(t, bootloader)
		m.Prestage(meta.SlotA)
		m.Prestage(meta.SlotB)
		cut := m.CutRun(meta.SlotB, at, func(d *apply.Disk) {
			if _, err := apply.Confirm(context.Background(), &d.Env); err != nil {
				t.Fatal(err)
			}
		})
		want := meta.SlotA
		if sl := m.Slots(); sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotB {
			want = meta.SlotB
		}
		end := m.Settle(false)
		if end != want {
			t.Fatalf("cut %d during confirm: settled on %s, want %s (%s)", at, end, want, m.LastReason())
		}
		m.CheckSettled(end)
		if !cut {
			t.Logf("%d cut points in confirm, each settles on b once its META commit is durable, else on a", at-1)
			return
		}
	}
}

// TestCutDuringRollback cuts before every change stager rollback makes
// when it gives a trial up from the trial slot (kexec'd, so boot-once is
// still set; on GRUB, its trial armed with a try left): the machine ends on
// a, and no boot runs b, which META holds bad (Settle checks every boot).
func TestCutDuringRollback(t *testing.T) { onEach(t, bootloaders, testCutDuringRollback) }

func testCutDuringRollback(t *testing.T, bootloader string) {
	for at := 1; ; at++ {
		m := applytest.NewOn(t, bootloader)
		m.Prestage(meta.SlotA)
		m.Prestage(meta.SlotB)
		cut := m.CutRun(meta.SlotB, at, func(d *apply.Disk) {
			if _, err := apply.Rollback(context.Background(), &d.Env); err != nil {
				t.Fatal(err)
			}
		})
		if end := m.Settle(false); end != meta.SlotA {
			t.Fatalf("cut %d during rollback: settled on %s", at, end)
		}
		m.CheckSettled(meta.SlotA)
		if sl := m.Slots(); sl.B.State != "bad" {
			t.Fatalf("cut %d: slot b is %q after the rollback", at, sl.B.State)
		}
		if !cut {
			t.Logf("%d cut points in rollback, all settle on a", at-1)
			return
		}
	}
}
