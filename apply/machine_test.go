package apply_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// bootloaders are those the machine scenarios run on: systemd-boot, and
// GRUB on a BIOS, where the OS sees no EFI variables (GRUB's trials and
// boot record live in grubenv and on the command line).
var bootloaders = []string{bootdisk.SystemdBoot, bootdisk.GRUBBIOS}

// onEach runs fn as a subtest on each of bootloaders.
func onEach(t *testing.T, bls []string, fn func(t *testing.T, bootloader string)) {
	for _, bl := range bls {
		t.Run(bl, func(t *testing.T) { fn(t, bl) })
	}
}

// TestApplyTrialConfirm: an apply kexecs the trial, whose confirm is
// firmware start pending until the firmware starts it, which completes
// the blessing. On GRUB the kexec is counted as a try of the trial
// (boot.KexecCounter), so slot b's entry has one try less left than on
// systemd-boot, whose boot-once a kexec does not spend.
func TestApplyTrialConfirm(t *testing.T) {
	onEach(t, append(bootloaders, bootdisk.GRUBEFI), testApplyTrialConfirm)
}

func testApplyTrialConfirm(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	ctx := context.Background()
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("first boot starts slot %s", s)
	}
	d := m.Prestage(meta.SlotA)
	if d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("decision %+v, want kexec into b", d)
	}
	sl := m.Slots()
	if sl.Phase != meta.PhaseTrial || sl.Trial != meta.SlotB || sl.TriesLeft != apply.DefaultTries || sl.B.State != "trial" || sl.B.Version != "v2" || sl.Active != meta.SlotA {
		t.Fatalf("after apply: %+v", sl)
	}
	dk := m.Open("")
	k, i, e, err := applytest.ReadSlot(ctx, dk.Loader, meta.SlotB)
	once, onceSet, _ := dk.Loader.BootOnce(ctx)
	def, _ := dk.Loader.Default(ctx)
	dk.Close()
	if err != nil || !bytes.Equal(k, m.V2Kernel) || !bytes.Equal(i, m.V2Initrd) {
		t.Fatalf("slot b holds other bytes than v2 (err %v)", err)
	}
	left := apply.DefaultTries
	if m.GRUB() {
		left-- // the kexec's
	}
	if !e.Counting || e.Left != left || !strings.Contains(e.Cmdline, "stagehand.slot=b") || !strings.Contains(e.Cmdline, "quiet") {
		t.Errorf("slot b entry %+v", e)
	}
	if !onceSet || once != meta.SlotB || def != meta.SlotA {
		t.Errorf("boot once %v %s, default %s; want once b, default a", onceSet, once, def)
	}
	m.CheckESP()

	// The kexec'd kernel's prestage counts the trial boot.
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("trial boot: %+v", d)
	}
	if sl := m.Slots(); sl.TriesLeft != apply.DefaultTries-1 || sl.Phase != meta.PhaseTrial {
		t.Fatalf("after the trial boot: %+v", sl)
	}

	// stager confirm on slot b.
	dk = m.Open(meta.SlotB)
	res, err := apply.Confirm(ctx, &dk.Env)
	dk.Close()
	if err != nil || !res.Changed || res.Slot != meta.SlotB || res.Staged == nil {
		t.Fatalf("confirm: %+v, %v", res, err)
	}
	// Confirmed after a kexec: in META, firmware start pending; the
	// bootloader as the trial armed it.
	sl = m.Slots()
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA || sl.B.State != "good" || sl.A.State != "good" || sl.Pending != meta.SlotB || sl.LoaderDefault != meta.SlotA {
		t.Fatalf("after confirm: %+v", sl)
	}
	dk = m.Open("")
	once, onceSet, _ = dk.Loader.BootOnce(ctx)
	def, _ = dk.Loader.Default(ctx)
	entries, _ := dk.Loader.Slots(ctx)
	dk.Close()
	if !onceSet || once != meta.SlotB || def != meta.SlotA || !entries[1].Counting {
		t.Errorf("after confirm: boot once %v %s, default %s, b's entry %s; want once b, default a, b counted", onceSet, once, def, entries[1].Description)
	}
	// Idempotent, and says so.
	dk = m.Open(meta.SlotB)
	res, err = apply.Confirm(ctx, &dk.Env)
	dk.Close()
	if err != nil || res.Changed || !strings.Contains(res.Message, "firmware start pending") {
		t.Fatalf("second confirm: %+v, %v", res, err)
	}
	// The first cold boot: the firmware starts b, whose prestage
	// completes the blessing.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("cold boot after confirm starts slot %s", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("first firmware boot of b: %+v", d)
	}
	sl = m.Slots()
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Pending != "" || sl.LoaderDefault != meta.SlotB {
		t.Fatalf("after the first firmware boot: %+v", sl)
	}
	if !strings.Contains(m.LastReason(), "started by the firmware: its blessing is complete") {
		t.Errorf("last transition: %s", m.LastReason())
	}
	dk = m.Open("")
	_, onceSet, _ = dk.Loader.BootOnce(ctx)
	def, _ = dk.Loader.Default(ctx)
	entries, _ = dk.Loader.Slots(ctx)
	dk.Close()
	if onceSet || def != meta.SlotB {
		t.Errorf("after the blessing: boot once set %v, default %s", onceSet, def)
	}
	for _, e := range entries {
		if e.Counting {
			t.Errorf("entry %s still counts tries after the blessing", e.Description)
		}
	}
	m.CheckESP()
	dk = m.Open(meta.SlotB)
	res, err = apply.Confirm(ctx, &dk.Env)
	dk.Close()
	if err != nil || res.Changed {
		t.Fatalf("confirm after the blessing: %+v, %v", res, err)
	}
	// Cold boot: the firmware starts b, prestage does nothing.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("second cold boot starts slot %s", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue || d.Reason != "nothing staged" {
		t.Fatalf("boot after confirm: %+v", d)
	}
}

func TestTrialThatNeverConfirms(t *testing.T) { onEach(t, bootloaders, testTrialThatNeverConfirms) }

func testTrialThatNeverConfirms(t *testing.T, bootloader string) {
	for _, tc := range []struct {
		name string
		// boots of b before the firmware brings a back
		run func(m *applytest.Machine)
	}{
		{"panics twice: kexec, then boot-once", func(m *applytest.Machine) {
			m.Prestage(meta.SlotB) // kexec'd, then panics: reset
			if s := m.Firmware(); s != meta.SlotB {
				m.T.Fatalf("after the first reset the firmware starts %s, want b (boot once)", s)
			}
			m.Prestage(meta.SlotB) // panics again: reset
		}},
		{"dies before its prestage runs", func(m *applytest.Machine) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := applytest.NewOn(t, bootloader)
			if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec {
				t.Fatalf("apply: %+v", d)
			}
			tc.run(m)
			if tc.name == "dies before its prestage runs" {
				if s := m.Firmware(); s != meta.SlotB {
					t.Fatalf("firmware starts %s, want b once", s)
				}
			}
			s := m.Firmware()
			if s != meta.SlotA {
				t.Fatalf("after the resets the firmware starts %s, want a", s)
			}
			if d := m.Prestage(meta.SlotA); d.Action != apply.Continue {
				t.Fatalf("back on a: %+v", d)
			}
			sl := m.Slots()
			if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm") {
				t.Fatalf("after rollback: %+v", sl)
			}
			if r := m.LastReason(); !strings.Contains(r, "rolled back: slot b did not confirm: the machine came back to slot a") {
				t.Errorf("last transition: %q", r)
			}
			if s := m.Firmware(); s != meta.SlotA {
				t.Errorf("the next cold boot starts %s", s)
			}
			m.CheckESP()
			// Confirm on a, the good slot, is a no-op; rollback to the bad b is refused.
			dk := m.Open(meta.SlotA)
			defer dk.Close()
			if _, err := apply.Rollback(context.Background(), &dk.Env); !errors.Is(err, apply.ErrRefused) || !strings.Contains(err.Error(), "does not hold a good image (bad: slot b did not confirm") {
				t.Errorf("rollback to a failed slot: %v", err)
			}
		})
	}
}

func TestTriesSpentOnTheTrialSlot(t *testing.T) {
	onEach(t, bootloaders, testTriesSpentOnTheTrialSlot)
}

func testTriesSpentOnTheTrialSlot(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	m.Prestage(meta.SlotA)
	for i := range apply.DefaultTries {
		if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
			t.Fatalf("trial boot %d: %+v", i+1, d)
		}
	}
	d := m.Prestage(meta.SlotB) // a third boot of b (say, chosen by hand): tries are spent
	if d.Action != apply.Reboot || d.Slot != meta.SlotA {
		t.Fatalf("boot past the tries: %+v", d)
	}
	if sl := m.Slots(); sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm within 2 boots") {
		t.Fatalf("%+v", sl)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Errorf("firmware starts %s", s)
	}
}

func TestCorruptPayloadIsRefused(t *testing.T) {
	onEach(t, bootloaders, testCorruptPayloadIsRefused)
}

func testCorruptPayloadIsRefused(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	st, err := stage.ReadStatus(context.Background(), m.Img)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := disk.Open(m.Img, true)
	sr, _ := d.Find(disk.LabelSTAGE)
	sr.WriteAt([]byte("X"), st.Staged.Artifacts[0].Offset+100)
	d.Close()
	if dec := m.Prestage(meta.SlotA); dec.Action != apply.Continue || !strings.Contains(dec.Reason, "staged payload refused") {
		t.Fatalf("decision %+v", dec)
	}
	after, _ := stage.ReadStatus(context.Background(), m.Img)
	if after.Staged != nil || after.Slots.Phase != meta.PhaseIdle || after.Slots.B.State != "" {
		t.Errorf("after the refusal: staged %+v, slots %+v", after.Staged, after.Slots)
	}
	if r := m.LastReason(); !strings.Contains(r, "sha256 is") {
		t.Errorf("reason %q does not say what was wrong", r)
	}
	dk := m.Open("")
	entries, _ := dk.Loader.Slots(context.Background())
	dk.Close()
	if len(entries) != 1 {
		t.Errorf("slot b was written: %+v", entries)
	}
}

func TestIdleBootChangesNothing(t *testing.T) {
	onEach(t, bootloaders, testIdleBootChangesNothing)
}

func testIdleBootChangesNothing(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	if _, err := stage.Cancel(context.Background(), m.Img, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := applytest.HashFile(t, m.Img)
	if d := m.Prestage(meta.SlotA); d.Action != apply.Continue || d.Reason != "nothing staged" {
		t.Fatalf("%+v", d)
	}
	if applytest.HashFile(t, m.Img) != before {
		t.Error("an idle boot changed the disk")
	}
}

func TestManualRollback(t *testing.T) { onEach(t, bootloaders, testManualRollback) }

func testManualRollback(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	m.Prestage(meta.SlotA)
	m.Prestage(meta.SlotB)
	dk := m.Open(meta.SlotB)
	if _, err := apply.Confirm(context.Background(), &dk.Env); err != nil {
		t.Fatal(err)
	}
	dk.Close()
	dk = m.Open(meta.SlotB)
	res, err := apply.Rollback(context.Background(), &dk.Env)
	dk.Close()
	if err != nil || res.Slot != meta.SlotA {
		t.Fatalf("rollback: %+v %v", res, err)
	}
	if sl := m.Slots(); sl.Active != meta.SlotA || sl.Previous != meta.SlotB || sl.LoaderDefault != meta.SlotA {
		t.Errorf("%+v", sl)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Errorf("after rollback the firmware starts %s", s)
	}
	m.CheckESP()
}

// TestBadSlotChosenByHand: after a rollback, booting the bad slot from the
// menu is left alone (someone chose it), and the log says it is bad.
func TestBadSlotChosenByHand(t *testing.T) { onEach(t, bootloaders, testBadSlotChosenByHand) }

func testBadSlotChosenByHand(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	m.Prestage(meta.SlotA)
	m.Firmware()           // boot-once: b, whose kernel dies before its prestage
	m.Firmware()           // the default: a
	m.Prestage(meta.SlotA) // the trial never came up: rolled back
	before := applytest.HashFile(t, m.Img)
	d := m.Prestage(meta.SlotB)
	if d.Action != apply.Continue || !strings.Contains(d.Reason, "chosen by hand") || !strings.Contains(d.Reason, "slot b is marked bad: slot b did not confirm") {
		t.Fatalf("%+v", d)
	}
	if applytest.HashFile(t, m.Img) != before {
		t.Error("a boot chosen by hand changed the disk")
	}
}

// TestSettledBootSkipsESP: a boot with nothing to do, of the active slot
// from its plain entry as the bootloader records it (systemd-boot's
// variables, GRUB's stagehand.grub=good:a:a), with META saying the
// bootloader was settled on that slot, does not read the ESP (a damaged
// one here goes unnoticed). Any of those not so, and it looks.
func TestSettledBootSkipsESP(t *testing.T) { onEach(t, bootloaders, testSettledBootSkipsESP) }

func testSettledBootSkipsESP(t *testing.T, bootloader string) {
	m := applytest.NewOn(t, bootloader)
	ctx := context.Background()
	if _, err := stage.Cancel(ctx, m.Img, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("the firmware starts slot %s", s)
	}
	if sl := m.Slots(); sl.LoaderDefault != meta.SlotA {
		t.Fatalf("a new disk's META: %+v; want the loader's default recorded", sl)
	}
	// The ESP's boot sector gone: opening the ESP fails.
	d, err := disk.Open(m.Img, true)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp.WriteAt(make([]byte, 512), 0)
	d.Close()
	bootOnce := func(t *testing.T) (apply.Decision, string) {
		t.Helper()
		dk := m.Open(meta.SlotA)
		defer dk.Close()
		var logs []string
		dk.Logf = func(f string, args ...any) { logs = append(logs, fmt.Sprintf(f, args...)) }
		dec, err := apply.Boot(ctx, &dk.Env)
		if err != nil {
			t.Fatalf("Boot: %v", err)
		}
		return dec, strings.Join(logs, "\n")
	}
	if dec, logs := bootOnce(t); dec.Action != apply.Continue || dec.Reason != "nothing staged" || logs != "" {
		t.Fatalf("settled boot: %+v, logs %q; want nothing staged without looking at the ESP", dec, logs)
	}
	setVar := func(name, v string) func() error {
		return func() error {
			return efivar.SetString(m.Vars, name, efivar.LoaderVendor, efivar.RuntimeAccess, v)
		}
	}
	setMarker := func(sl meta.Slot) func() error {
		return func() error {
			dk := m.Open("")
			defer dk.Close()
			return dk.Store.Update(func(b *meta.Block) error {
				s, err := b.Slots()
				if err != nil {
					return err
				}
				s.LoaderDefault = sl
				return b.SetSlots(s)
			})
		}
	}
	type tcase struct {
		name       string
		set, reset func() error
	}
	cases := []tcase{
		{"counted entry", setVar(systemdboot.CountPathVar, `\loader\entries\stagehand-a+1.conf`), func() error { return m.Vars.Remove(systemdboot.CountPathVar, efivar.LoaderVendor) }},
		{"nothing recorded", func() error { return m.Vars.Remove(systemdboot.SelectedVar, efivar.LoaderVendor) }, setVar(systemdboot.SelectedVar, "stagehand-a.conf")},
		{"another entry", setVar(systemdboot.SelectedVar, "stagehand-b.conf"), setVar(systemdboot.SelectedVar, "stagehand-a.conf")},
	}
	if m.GRUB() {
		if m.GRUBBoot != "good:a:a" {
			t.Fatalf("GRUB's boot record %q", m.GRUBBoot)
		}
		record := func(v string) func() error { return func() error { m.GRUBBoot = v; return nil } }
		cases = []tcase{
			{"a trial", record("trial:a:a"), record("good:a:a")},
			{"not a good slot", record("noslot:a:a"), record("good:a:a")},
			{"not saved", record("nosave:a:a"), record("good:a:a")},
			{"nothing recorded", record(""), record("good:a:a")},
			{"another entry", record("good:b:b"), record("good:a:a")},
			{"the fallback", record("good:b:ba"), record("good:a:a")},
			{"picked by hand", record("good:b:a"), record("good:a:a")},
		}
	}
	for _, tc := range append(cases,
		tcase{"META not settled", setMarker(""), setMarker(meta.SlotA)},
		tcase{"META settled on the other slot", setMarker(meta.SlotB), setMarker(meta.SlotA)},
	) {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.set(); err != nil {
				t.Fatal(err)
			}
			dec, logs := bootOnce(t)
			if dec.Action != apply.Continue || !strings.Contains(logs, "checking the default slot") {
				t.Errorf("%+v, logs %q; want the default checked on the ESP (and failing)", dec, logs)
			}
			if err := tc.reset(); err != nil {
				t.Fatal(err)
			}
			if dec, logs := bootOnce(t); logs != "" {
				t.Errorf("settled again: %+v, logs %q", dec, logs)
			}
		})
	}
}
