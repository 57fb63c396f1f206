package apply_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// cutAfterSet is an EFI variable store that loses power right after it
// sets name: the variable is written, nothing after it is.
type cutAfterSet struct {
	efivar.Dir
	name string
}

func (c cutAfterSet) Set(name, vendor string, attrs uint32, data []byte) error {
	if err := c.Dir.Set(name, vendor, attrs, data); err != nil {
		return err
	}
	if name == c.name {
		panic(fmt.Errorf("%w after setting %s", applytest.ErrCut, name))
	}
	return nil
}

// TestCutAfterBootOnce cuts the power after the apply set boot-once to b
// and before META records the trial (the VM power-cut campaign lands there
// when it cuts on the "applying → trial" line, which is logged before its
// commit). The firmware then boots b, a slot META holds bad ("being
// written"): its prestage must not run it, but go back to a, which applies
// v2 again; the machine ends on v2, confirmed, never having run b outside a
// trial.
func TestCutAfterBootOnce(t *testing.T) {
	m := applytest.New(t)
	d, err := apply.Open(context.Background(), m.Img, cutAfterSet{Dir: m.Vars, name: systemdboot.OneShotVar})
	if err != nil {
		t.Fatal(err)
	}
	d.Booted, d.Logf = meta.SlotA, t.Logf
	func() {
		defer func() {
			d.Disk.Close()
			if r := recover(); r != nil {
				if err, ok := r.(error); !ok || !errors.Is(err, applytest.ErrCut) {
					panic(r)
				}
				t.Logf("%v", r)
			}
		}()
		apply.Boot(context.Background(), &d.Env)
		t.Fatal("the apply ran to its end: no cut")
	}()
	if sl := m.Slots(); sl.Phase != meta.PhaseApplying || sl.B.State != "bad" {
		t.Fatalf("META after the cut: %+v, want applying with b bad", sl)
	}
	slot := m.Firmware()
	if slot != meta.SlotB {
		t.Fatalf("the firmware starts slot %s, want b (boot-once)", slot)
	}
	dec := m.Prestage(slot)
	if dec.Action == apply.Continue {
		t.Fatalf("slot b, bad and being written in META, boots on: %+v (%s)", dec, m.LastReason())
	}
	t.Logf("b's prestage: %s: %s", dec.Action, dec.Reason)
	if sl := m.Slots(); sl.Phase != meta.PhaseApplying {
		t.Errorf("META after b's prestage: %+v: the stage must stay to be applied again", sl)
	}
	end := m.Settle(true)
	if end != meta.SlotB {
		t.Fatalf("settled on %s, want b: the upgrade was lost (%s)", end, m.LastReason())
	}
	m.CheckSettled(end)
}
