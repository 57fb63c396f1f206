package apply_test

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

// noRuntimeWrites is firmware that refuses variable writes at run time, as
// efivarfs reports it (a Raspberry Pi's missing SetVariableRT: EROFS),
// for the variables the OS writes; the loader's own (LoaderEntrySelected,
// set at boot) still appear.
type noRuntimeWrites struct{ efivar.Store }

func (n noRuntimeWrites) Set(name, vendor string, attrs uint32, data []byte) error {
	return &fs.PathError{Op: "write", Path: name + "-" + vendor, Err: unix.EROFS}
}

func (n noRuntimeWrites) Remove(name, vendor string) error {
	if _, _, err := n.Get(name, vendor); errors.Is(err, fs.ErrNotExist) {
		return nil // efivarfs: nothing to remove
	}
	return &fs.PathError{Op: "remove", Path: name + "-" + vendor, Err: unix.EROFS}
}

// TestNoRuntimeVariableWrites: a trial is armed without boot-once; the
// kexec tries it and its confirm blesses it at once (the firmware cannot
// be made to start it once first). Where the kexec cannot be made, the
// firmware keeps starting the active slot, which arms the trial again and
// gives it up: never a loop of applies.
func TestNoRuntimeVariableWrites(t *testing.T) {
	boot1 := func(m *applytest.Machine, slot meta.Slot) apply.Decision {
		d := m.OpenVars(slot, noRuntimeWrites{m.Vars})
		defer d.Close()
		dec, err := apply.Boot(context.Background(), &d.Env)
		if err != nil {
			t.Logf("Boot: %v", err)
		}
		return dec
	}
	t.Run("kexec", func(t *testing.T) {
		m := applytest.New(t)
		m.Firmware()
		if d := boot1(m, meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
			t.Fatalf("apply: %+v", d)
		}
		dk := m.Open("")
		_, once, _ := dk.Loader.BootOnce(context.Background())
		dk.Close()
		if once {
			t.Fatal("boot-once set on firmware that takes no writes")
		}
		if d := boot1(m, meta.SlotB); d.Action != apply.Continue {
			t.Fatalf("trial boot: %+v", d)
		}
		d := m.OpenVars(meta.SlotB, noRuntimeWrites{m.Vars})
		res, err := apply.Confirm(context.Background(), &d.Env)
		d.Close()
		if err != nil || !strings.Contains(res.Message, "cannot boot it once first") {
			t.Fatalf("confirm: %+v, %v", res, err)
		}
		if s := m.Firmware(); s != meta.SlotB {
			t.Fatalf("the firmware starts %s", s)
		}
		boot1(m, meta.SlotB)
		m.CheckSettled(meta.SlotB)
	})
	t.Run("no kexec", func(t *testing.T) {
		m := applytest.New(t)
		m.Firmware()
		boot1(m, meta.SlotA) // kexec into b fails: the firmware starts a
		for i := 0; i < apply.MaxRearm; i++ {
			if s := m.Firmware(); s != meta.SlotA {
				t.Fatalf("the firmware starts %s", s)
			}
			if d := boot1(m, meta.SlotA); d.Action != apply.Kexec {
				t.Fatalf("rearm %d: %+v", i+1, d)
			}
		}
		m.Firmware()
		if d := boot1(m, meta.SlotA); d.Action != apply.Continue || !strings.Contains(d.Reason, "never booted") {
			t.Fatalf("after %d rearms: %+v", apply.MaxRearm, d)
		}
		if sl := m.Slots(); sl.Active != meta.SlotA || sl.Phase != meta.PhaseIdle || sl.B.State != "bad" {
			t.Fatalf("%+v", sl)
		}
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
