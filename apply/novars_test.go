package apply_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestNoRuntimeVariableWrites: on firmware that takes no variable writes
// at run time, a trial is armed without boot-once: its counted entry is the
// loader's default (boot.CountedDefault), so systemd-boot counts its
// firmware starts and gives it up by itself. A confirm after a kexec stays
// firmware start pending as anywhere else, and the first firmware start
// completes the blessing or, refused, comes back to slot a.
func TestNoRuntimeVariableWrites(t *testing.T) {
	boot1 := func(m *applytest.Machine, slot meta.Slot) apply.Decision {
		d := m.OpenVars(slot, applytest.NoRuntimeWrites{Store: m.Vars})
		defer d.Close()
		dec, err := apply.Boot(context.Background(), &d.Env)
		if err != nil {
			t.Logf("Boot: %v", err)
		}
		return dec
	}
	confirm := func(m *applytest.Machine, slot meta.Slot) *apply.Result {
		d := m.OpenVars(slot, applytest.NoRuntimeWrites{Store: m.Vars})
		defer d.Close()
		res, err := apply.Confirm(context.Background(), &d.Env)
		if err != nil {
			t.Fatalf("confirm: %v", err)
		}
		return res
	}
	armed := func(m *applytest.Machine) {
		t.Helper()
		dk := m.Open("")
		defer dk.Close()
		if _, once, _ := dk.Loader.BootOnce(context.Background()); once {
			t.Fatal("boot-once set on firmware that takes no writes")
		}
		if def, err := dk.Loader.Default(context.Background()); err != nil || def != meta.SlotB {
			t.Fatalf("the default is %q, %v; want b's counted entry", def, err)
		}
	}
	// pending: v2 kexec'd into, confirmed, firmware start pending.
	pending := func(t *testing.T) *applytest.Machine {
		m := applytest.New(t)
		m.Firmware()
		if d := boot1(m, meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
			t.Fatalf("apply: %+v", d)
		}
		armed(m)
		if d := boot1(m, meta.SlotB); d.Action != apply.Continue {
			t.Fatalf("trial boot: %+v", d)
		}
		res := confirm(m, meta.SlotB)
		if !strings.Contains(res.Message, "firmware start pending") || !strings.Contains(res.Message, "by the bootloader's default") {
			t.Fatalf("confirm: %+v", res)
		}
		if sl := m.Slots(); sl.Pending != meta.SlotB || sl.Active != meta.SlotB {
			t.Fatalf("after the confirm: %+v", sl)
		}
		armed(m)
		return m
	}
	t.Run("cold boot completes the blessing", func(t *testing.T) {
		m := pending(t)
		if s := m.Firmware(); s != meta.SlotB {
			t.Fatalf("the firmware starts %s", s)
		}
		boot1(m, meta.SlotB)
		m.CheckSettled(meta.SlotB)
	})
	t.Run("cold boot refused", func(t *testing.T) {
		m := pending(t)
		// Each start of b fails before its prestage: systemd-boot counts
		// it, until it has none left and boots a.
		for i := 0; i < apply.DefaultTries; i++ {
			if s := m.Firmware(); s != meta.SlotB {
				t.Fatalf("firmware start %d: %s", i+1, s)
			}
		}
		if s := m.Firmware(); s != meta.SlotA {
			t.Fatalf("after b's tries the firmware starts %s", s)
		}
		boot1(m, meta.SlotA)
		sl := m.Slots()
		if sl.Active != meta.SlotA || sl.Pending != "" || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "could not start it at the first cold boot") {
			t.Fatalf("%+v", sl)
		}
		m.Firmware()
		boot1(m, meta.SlotA)
		m.CheckSettled(meta.SlotA)
	})
	t.Run("no kexec, trial fails", func(t *testing.T) {
		m := applytest.New(t)
		m.Firmware()
		boot1(m, meta.SlotA) // the kexec into b is not made: the reset goes to the firmware
		armed(m)
		for i := 0; i < apply.DefaultTries; i++ {
			if s := m.Firmware(); s != meta.SlotB {
				t.Fatalf("firmware start %d: %s", i+1, s)
			}
			if d := boot1(m, meta.SlotB); d.Action != apply.Continue {
				t.Fatalf("trial boot %d: %+v", i+1, d)
			}
			// b resets before it confirms.
		}
		if s := m.Firmware(); s != meta.SlotA {
			t.Fatalf("after b's tries the firmware starts %s", s)
		}
		if d := boot1(m, meta.SlotA); d.Action != apply.Continue || !strings.Contains(d.Reason, "did not confirm") {
			t.Fatalf("slot a's prestage: %+v", d)
		}
		if sl := m.Slots(); sl.Active != meta.SlotA || sl.Phase != meta.PhaseIdle || sl.B.State != "bad" {
			t.Fatalf("%+v", sl)
		}
		m.Firmware()
		boot1(m, meta.SlotA)
		m.CheckSettled(meta.SlotA)
		applies := 0
		for _, tr := range m.Status().Transitions {
			if strings.HasPrefix(tr.Reason, "writing ") {
				applies++
			}
		}
		if applies != 1 {
			t.Fatalf("slot b written %d times, want once", applies)
		}
	})
}
