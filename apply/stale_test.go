package apply_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// withESP runs fn on the ESP partition of the machine's disk.
func withESP(t *testing.T, m *applytest.Machine, write bool, fn func(*disk.Region) error) {
	t.Helper()
	d, err := disk.Open(m.Img, write)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(disk.LabelESP)
	if err == nil {
		err = fn(r)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// espBytes reads the ESP partition of the machine's disk.
func espBytes(t *testing.T, m *applytest.Machine) (b []byte) {
	t.Helper()
	withESP(t, m, false, func(r *disk.Region) error {
		b = make([]byte, r.Size)
		_, err := r.ReadAt(b, 0)
		return err
	})
	return b
}

// putESP writes b back over the ESP: what a power cut leaves when none of
// the ESP's writes since b was read became durable.
func putESP(t *testing.T, m *applytest.Machine, b []byte) {
	t.Helper()
	withESP(t, m, true, func(r *disk.Region) error {
		_, err := r.WriteAt(b, 0)
		return err
	})
}

// confirmedWithStaleESP brings the machine to the state issue 16 found: v2
// tried in slot b through a firmware boot (boot-once used up), confirmed
// in META and the boot-once cleared, but none of confirm's ESP writes
// (the bless of b's entry, loader.conf's new default) durable: the ESP
// still says slot a by default, and b's entry still counts.
func confirmedWithStaleESP(t *testing.T, bootloader string) *applytest.Machine {
	t.Helper()
	m := applytest.NewOn(t, bootloader)
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec {
		t.Fatalf("apply: %+v", d)
	}
	// kexec unavailable: the firmware boots b once.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("the firmware starts %s, want b once", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("trial boot: %+v", d)
	}
	esp := espBytes(t, m)
	if res, err := m.Confirm(meta.SlotB); err != nil || !res.Changed {
		t.Fatalf("confirm: %+v, %v", res, err)
	}
	putESP(t, m, esp)
	if sl := m.Slots(); sl.Active != meta.SlotB || sl.B.State != "good" || sl.Phase != meta.PhaseIdle {
		t.Fatalf("META after the confirm: %+v", sl)
	}
	return m
}

// TestStaleDefaultAfterConfirm: the firmware boots slot a by the ESP's
// stale default; its prestage puts the default right and goes on to b in
// the same boot, recording why: v1 never runs once META confirmed v2.
func TestStaleDefaultAfterConfirm(t *testing.T) {
	onEach(t, bootloaders, testStaleDefaultAfterConfirm)
}

func testStaleDefaultAfterConfirm(t *testing.T, bootloader string) {
	m := confirmedWithStaleESP(t, bootloader)
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("after the cut the firmware starts %s; the test wants the stale default a", s)
	}
	d := m.Prestage(meta.SlotA)
	if d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("slot a booted by the stale default: %+v; want a kexec into b", d)
	}
	if r := m.LastReason(); !strings.Contains(r, "booted slot a by a stale default: META holds slot b active (v2)") {
		t.Errorf("the reason recorded: %q", r)
	}
	// The default is b now, durable: a firmware reboot (no kexec) gets
	// there too.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("after the repair the firmware starts %s, want b", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("slot b: %+v", d)
	}
	m.CheckSettled(meta.SlotB)
	if end := m.Settle(false); end != meta.SlotB {
		t.Fatalf("settles on %s", end)
	}
}

// TestStaleDefaultHandPick: a person who picks slot a in the boot menu is
// left alone, stale default or not; only a boot the bootloader made by
// its default is sent on.
func TestStaleDefaultHandPick(t *testing.T) { onEach(t, bootloaders, testStaleDefaultHandPick) }

func testStaleDefaultHandPick(t *testing.T, bootloader string) {
	t.Run("default repaired, a picked by hand", func(t *testing.T) {
		m := applytest.NewOn(t, bootloader)
		if end := m.Settle(true); end != meta.SlotB {
			t.Fatalf("settled on %s", end)
		}
		m.PickByHand(meta.SlotA)
		before := applytest.HashFile(t, m.Img)
		d := m.Prestage(meta.SlotA)
		if d.Action != apply.Continue || !strings.Contains(d.Reason, "chosen by hand, left alone") {
			t.Fatalf("a picked by hand: %+v", d)
		}
		if applytest.HashFile(t, m.Img) != before {
			t.Error("a boot picked by hand changed the disk")
		}
	})
	t.Run("stale default, b picked by hand", func(t *testing.T) {
		m := confirmedWithStaleESP(t, bootloader)
		m.PickByHand(meta.SlotB)
		if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
			t.Fatalf("b picked by hand: %+v", d)
		}
		m.CheckSettled(meta.SlotB)
	})
	t.Run("nothing recorded by the bootloader", func(t *testing.T) {
		m := confirmedWithStaleESP(t, bootloader)
		if s := m.Firmware(); s != meta.SlotA {
			t.Fatalf("the firmware starts %s", s)
		}
		m.DropBootRecord()
		d := m.Prestage(meta.SlotA)
		if d.Action != apply.Continue || !strings.Contains(d.Reason, "chosen by hand") {
			t.Fatalf("a booted, the loader silent on which entry: %+v; want it left alone", d)
		}
		// The default was put right all the same: the next boot is b.
		if s := m.Firmware(); s != meta.SlotB {
			t.Errorf("the next boot starts %s", s)
		}
	})
}

// TestDefaultInFirmwareVariable: a default set with bootctl set-default
// (LoaderEntryDefault) wins over loader.conf in systemd-boot: Default
// reads it, and when it lags META the boot goes on to the active slot and
// the variable is dropped, so that loader.conf alone says. systemd-boot
// only: an EFI variable of its own.
func TestDefaultInFirmwareVariable(t *testing.T) {
	m := applytest.New(t)
	if end := m.Settle(true); end != meta.SlotB {
		t.Fatalf("settled on %s", end)
	}
	if err := efivar.SetString(m.Vars, systemdboot.DefaultVar, efivar.LoaderVendor, efivar.NonVolatile|efivar.BootServiceAccess|efivar.RuntimeAccess, "stagehand-a.conf"); err != nil {
		t.Fatal(err)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("with %s=stagehand-a.conf the firmware starts %s", systemdboot.DefaultVar, s)
	}
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("%+v", d)
	}
	if _, _, err := m.Vars.Get(systemdboot.DefaultVar, efivar.LoaderVendor); err == nil {
		t.Errorf("%s is still set", systemdboot.DefaultVar)
	}
	if s := m.Firmware(); s != meta.SlotB {
		t.Errorf("the next boot starts %s", s)
	}
}

// TestTrialNeverBooted: META armed the trial, but the machine came back to
// slot a with no boot of b (the boot-once variable lost, no kexec made):
// the trial is armed again, once; lost a second time, it is given up
// saying that b was never booted. systemd-boot only: it loses the
// boot-once variable; GRUB's trial is armed in grubenv, durable before
// META records it (TestCutDuringApply cuts between the two).
func TestTrialNeverBooted(t *testing.T) {
	lose := func(m *applytest.Machine) {
		t.Helper()
		if err := m.Vars.Remove(systemdboot.OneShotVar, efivar.LoaderVendor); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("lost once: tried again and confirmed", func(t *testing.T) {
		m := applytest.New(t)
		if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec {
			t.Fatalf("apply: %+v", d)
		}
		lose(m) // the power fails before the kexec, boot-once lost
		if s := m.Firmware(); s != meta.SlotA {
			t.Fatalf("the firmware starts %s", s)
		}
		d := m.Prestage(meta.SlotA)
		if d.Action != apply.Kexec || d.Slot != meta.SlotB || !strings.Contains(d.Reason, "never booted") {
			t.Fatalf("a trial never booted: %+v; want it tried again", d)
		}
		if sl := m.Slots(); sl.Phase != meta.PhaseTrial || sl.TriesLeft != apply.DefaultTries || sl.Rearmed != 1 || sl.B.State != "trial" {
			t.Fatalf("META: %+v", sl)
		}
		dk := m.Open("")
		once, ok, err := dk.Loader.BootOnce(context.Background())
		dk.Close()
		if err != nil || !ok || once != meta.SlotB {
			t.Fatalf("boot-once %s %v %v; want b set again", once, ok, err)
		}
		if end := m.Settle(true); end != meta.SlotB {
			t.Fatalf("settled on %s", end)
		}
		m.CheckSettled(meta.SlotB)
		if sl := m.Slots(); sl.Rearmed != 0 {
			t.Errorf("rearmed %d after the confirm", sl.Rearmed)
		}
	})
	t.Run("lost twice: given up, never booted", func(t *testing.T) {
		m := applytest.New(t)
		m.Prestage(meta.SlotA)
		for range 2 {
			lose(m)
			if s := m.Firmware(); s != meta.SlotA {
				t.Fatalf("the firmware starts %s", s)
			}
			m.Prestage(meta.SlotA)
		}
		sl := m.Slots()
		if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "slot b was never booted: armed 2 times") {
			t.Fatalf("META: %+v", sl)
		}
		if end := m.Settle(true); end != meta.SlotA {
			t.Fatalf("settled on %s", end)
		}
		m.CheckSettled(meta.SlotA)
	})
	t.Run("booted by the firmware, died before prestage: not retried", func(t *testing.T) {
		m := applytest.New(t)
		m.Prestage(meta.SlotA)
		if s := m.Firmware(); s != meta.SlotB { // counted: +1-1
			t.Fatalf("the firmware starts %s", s)
		}
		m.Firmware() // b's kernel died: the default a
		d := m.Prestage(meta.SlotA)
		if d.Action != apply.Continue {
			t.Fatalf("%+v", d)
		}
		if sl := m.Slots(); sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "1 firmware boot(s) of b that never reached its prestage") {
			t.Fatalf("META: %+v", sl)
		}
	})
}
