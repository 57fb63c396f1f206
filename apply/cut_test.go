package apply_test

import (
	"context"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestCutDuringApply cuts the power before every change the apply makes to
// the ESP and the EFI variables (its META commits sit between them), then
// boots on: the machine always ends on v1 or v2, consistent, whether v2
// confirms or never does.
func TestCutDuringApply(t *testing.T) {
	for _, confirm := range []bool{true, false} {
		for at := 1; ; at++ {
			m := applytest.New(t)
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

// TestCutDuringConfirm cuts before every change confirm makes after its
// META commit: the next boot finishes it, on b.
func TestCutDuringConfirm(t *testing.T) {
	for at := 1; ; at++ {
		m := applytest.New(t)
		m.Prestage(meta.SlotA)
		m.Prestage(meta.SlotB)
		cut := m.CutRun(meta.SlotB, at, func(d *apply.Disk) {
			if _, err := apply.Confirm(context.Background(), &d.Env); err != nil {
				t.Fatal(err)
			}
		})
		end := m.Settle(false)
		if end != meta.SlotB {
			t.Fatalf("cut %d during confirm: settled on %s", at, end)
		}
		m.CheckSettled(end)
		if !cut {
			t.Logf("%d cut points in confirm, all settle on b", at-1)
			return
		}
	}
}
