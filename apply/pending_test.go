package apply_test

import (
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// pendingB brings a machine to v2 in slot b confirmed after a kexec,
// firmware start pending.
func pendingB(t *testing.T, bootloader string) *applytest.Machine {
	m := applytest.NewOn(t, bootloader)
	m.Firmware()
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("apply: %+v", d)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("trial boot: %+v", d)
	}
	if _, err := m.Confirm(meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if sl := m.Slots(); sl.Pending != meta.SlotB || sl.Active != meta.SlotB {
		t.Fatalf("after the kexec'd confirm: %+v", sl)
	}
	return m
}

// TestPendingFirmwareRefuses: the first cold boot after a kexec'd confirm
// cannot start slot b (systemd-boot counts the try, fails to load it and
// returns; the firmware starts the loader again, which boots its default,
// slot a; GRUB counts the try and falls back to a, or a reset finds b's
// tries used up): slot a's prestage rolls b back, saying why, and the
// machine is settled on a.
func TestPendingFirmwareRefuses(t *testing.T) {
	onEach(t, bootloaders, testPendingFirmwareRefuses)
}

func testPendingFirmwareRefuses(t *testing.T, bootloader string) {
	m := pendingB(t, bootloader)
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("the first cold boot tries slot %s, want b (boot-once)", s)
	}
	// b's kernel does not load: the loader returns to the firmware.
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("the loader's second start boots slot %s, want the default a", s)
	}
	d := m.Prestage(meta.SlotA)
	if d.Action != apply.Continue {
		t.Fatalf("slot a's prestage: %+v", d)
	}
	sl := m.Slots()
	if sl.Active != meta.SlotA || sl.Pending != "" || sl.B.State != "bad" || sl.Phase != meta.PhaseIdle {
		t.Fatalf("after the failed cold boot: %+v", sl)
	}
	want := "slot b was confirmed after a kexec, but the firmware could not start it at the first cold boot"
	if !strings.Contains(sl.B.Reason, want) || !strings.HasPrefix(m.LastReason(), "rolled back: ") {
		t.Errorf("slot b's reason %q, last transition %q; want %q, as a roll-back", sl.B.Reason, m.LastReason(), want)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("the next cold boot starts slot %s", s)
	}
	m.Prestage(meta.SlotA)
	m.CheckSettled(meta.SlotA)
}

// TestPendingPanicsAtColdBoot: the firmware starts b, which dies before its
// prestage (a panic in the kernel): the reset comes to a, which rolls b
// back.
func TestPendingPanicsAtColdBoot(t *testing.T) {
	onEach(t, bootloaders, testPendingPanicsAtColdBoot)
}

func testPendingPanicsAtColdBoot(t *testing.T, bootloader string) {
	m := pendingB(t, bootloader)
	m.Firmware() // b, which panics
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("after the panic the firmware starts %s", s)
	}
	m.Prestage(meta.SlotA)
	if sl := m.Slots(); sl.Active != meta.SlotA || sl.B.State != "bad" {
		t.Fatalf("%+v", sl)
	}
}

// TestPendingBootOnceLost: the boot-once variable is gone before the first
// cold boot (a reset of the variables): the firmware starts a without
// trying b; a's prestage arms b again and reboots through the firmware,
// whose start of b completes the blessing. systemd-boot only: GRUB's trial
// is in grubenv, a file no variable reset loses.
func TestPendingBootOnceLost(t *testing.T) {
	m := pendingB(t, bootdisk.SystemdBoot)
	if err := m.Vars.Remove(systemdboot.OneShotVar, efivar.LoaderVendor); err != nil {
		t.Fatal(err)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("without boot-once the firmware starts %s", s)
	}
	d := m.Prestage(meta.SlotA)
	if d.Action != apply.Reboot || !strings.Contains(d.Reason, "boot-once lost") {
		t.Fatalf("slot a's prestage: %+v; want a firmware reboot into b", d)
	}
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("the firmware starts %s, want b", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("%+v", d)
	}
	m.CheckSettled(meta.SlotB)
}

// TestPendingNotKexec: a trial started by the firmware (kexec unavailable)
// is blessed at its confirm, as before: nothing is pending.
func TestPendingNotKexec(t *testing.T) { onEach(t, bootloaders, testPendingNotKexec) }

func testPendingNotKexec(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	m.Firmware()
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec {
		t.Fatalf("%+v", d)
	}
	if s := m.Firmware(); s != meta.SlotB { // kexec failed: firmware reboot, boot-once
		t.Fatalf("the firmware starts %s", s)
	}
	m.Prestage(meta.SlotB)
	if _, err := m.Confirm(meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if sl := m.Slots(); sl.Pending != "" {
		t.Fatalf("a trial the firmware started is pending: %+v", sl)
	}
	m.CheckSettled(meta.SlotB)
}

// TestPendingRollback: stager rollback while slot b is firmware start
// pending goes back to a for good: nothing pending, a the default, no
// boot-once left to start b.
func TestPendingRollback(t *testing.T) { onEach(t, bootloaders, testPendingRollback) }

func testPendingRollback(t *testing.T, bootloader string) {
	m := pendingB(t, bootloader)
	if _, err := m.Rollback(meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if sl := m.Slots(); sl.Active != meta.SlotA || sl.Pending != "" {
		t.Fatalf("after the rollback: %+v", sl)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("the next boot starts %s", s)
	}
	m.Prestage(meta.SlotA)
	m.CheckSettled(meta.SlotA)
}
