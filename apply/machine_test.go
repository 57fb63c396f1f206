package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

const mib = 1 << 20

// machine is a stagehand disk image with its EFI variables: what survives
// a reboot. boot() plays the firmware and systemd-boot: the boot-once slot
// if set (and consumed), else the default.
type machine struct {
	t        *testing.T
	img      string
	vars     efivar.Dir
	v2kernel []byte
	v2initrd []byte
	now      time.Time
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	m := &machine{t: t, img: filepath.Join(dir, "disk.img"), vars: efivar.Dir(t.TempDir()), now: time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)}
	k1 := boottest.FakeKernel(t, dir, "6.1.0-v1", 2*mib+100)
	i1 := filepath.Join(dir, "initrd-v1")
	os.WriteFile(i1, bytes.Repeat([]byte("v1 initramfs "), 50000), 0o644)
	_, err := boot.InitDisk(context.Background(), m.img, boot.DiskConfig{
		Layout: disk.Layout{Size: 300 * mib, ESPSize: 260 * mib, StageSize: 32 * mib},
		Kernel: k1, Initramfs: i1, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v1", LoaderEFI: k1,
	})
	if err != nil {
		t.Fatal(err)
	}
	// v2 is staged through the real stager path, from an OCI layout.
	k2 := boottest.FakeKernel(t, dir, "6.1.0-v2", 3*mib+7)
	i2 := filepath.Join(dir, "initrd-v2")
	os.WriteFile(i2, bytes.Repeat([]byte("v2 initramfs "), 80000), 0o644)
	m.v2kernel, _ = os.ReadFile(k2)
	m.v2initrd, _ = os.ReadFile(i2)
	img, err := installer.Build(installer.BuildOptions{Kernel: k2, Initramfs: i2, Cmdline: "console=ttyS0 rdinit=/prestage quiet", Version: "v2", Arch: "amd64", TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	layout := filepath.Join(dir, "layout")
	if err := installer.WriteLayout(layout, "v2", img); err != nil {
		t.Fatal(err)
	}
	if _, err := stage.Stage(context.Background(), stage.Options{Disk: m.img, Image: "oci:" + layout + ":v2"}); err != nil {
		t.Fatal(err)
	}
	return m
}

// open opens the disk as the running slot sees it.
func (m *machine) open(booted meta.Slot) *Disk {
	m.t.Helper()
	d, err := Open(context.Background(), m.img, m.vars)
	if err != nil {
		m.t.Fatal(err)
	}
	d.Booted = booted
	m.now = m.now.Add(time.Minute)
	now := m.now
	d.Now = func() time.Time { return now }
	d.Logf = m.t.Logf
	return d
}

// firmware returns the slot the firmware and systemd-boot start, and
// records the boot in EFI variables as systemd-boot 252 does.
func (m *machine) firmware() meta.Slot {
	m.t.Helper()
	d := m.open("")
	defer d.Close()
	ctx := context.Background()
	s, ok, err := d.Loader.BootOnce(ctx)
	if err != nil {
		m.t.Fatal(err)
	}
	if ok {
		if err := d.Loader.ClearBootOnce(ctx); err != nil {
			m.t.Fatal(err)
		}
	} else if s, err = d.Loader.Default(ctx); err != nil {
		m.t.Fatal(err)
	}
	m.recordBoot(d, s)
	return s
}

// recordBoot sets the variables systemd-boot 252 sets for a boot of
// slot's entry: LoaderEntrySelected, its file name in lower case, and
// LoaderBootCountPath when it counts tries.
func (m *machine) recordBoot(d *Disk, slot meta.Slot) {
	m.t.Helper()
	entries, err := d.Loader.Slots(context.Background())
	if err != nil {
		m.t.Fatal(err)
	}
	const volatile = efivar.BootServiceAccess | efivar.RuntimeAccess
	for _, e := range entries {
		if e.Slot != slot {
			continue
		}
		name := path.Base(e.Description)
		if err := efivar.SetString(m.vars, boot.SelectedVar, efivar.LoaderVendor, volatile, strings.ToLower(name)); err != nil {
			m.t.Fatal(err)
		}
		if e.Counting {
			err = efivar.SetString(m.vars, boot.CountPathVar, efivar.LoaderVendor, volatile, `\loader\entries\`+name)
		} else if err = m.vars.Remove(boot.CountPathVar, efivar.LoaderVendor); errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		if err != nil {
			m.t.Fatal(err)
		}
		return
	}
	m.t.Fatalf("the firmware boots slot %s, which has no entry", slot)
}

// prestage runs the pre-stage step for a boot of slot.
func (m *machine) prestage(slot meta.Slot) Decision {
	m.t.Helper()
	d := m.open(slot)
	defer d.Close()
	dec, err := Boot(context.Background(), &d.Env)
	if err != nil {
		m.t.Logf("Boot: %v", err)
	}
	return dec
}

func (m *machine) slots() *meta.Slots {
	m.t.Helper()
	st, err := stage.ReadStatus(context.Background(), m.img)
	if err != nil {
		m.t.Fatal(err)
	}
	return st.Slots
}

func (m *machine) lastReason() string {
	m.t.Helper()
	st, err := stage.ReadStatus(context.Background(), m.img)
	if err != nil {
		m.t.Fatal(err)
	}
	return st.Transitions[len(st.Transitions)-1].Reason
}

// checkESP runs fsck.fat -n on a copy of the ESP.
func (m *machine) checkESP() {
	m.t.Helper()
	d, err := disk.Open(m.img, false)
	if err != nil {
		m.t.Fatal(err)
	}
	defer d.Close()
	esp, err := d.Find(disk.LabelESP)
	if err != nil {
		m.t.Fatal(err)
	}
	buf := make([]byte, esp.Size)
	esp.ReadAt(buf, 0)
	p := filepath.Join(m.t.TempDir(), "esp")
	os.WriteFile(p, buf, 0o600)
	if out, err := exec.Command("fsck.fat", "-n", p).CombinedOutput(); err != nil {
		m.t.Fatalf("fsck.fat -n on the ESP: %v\n%s", err, out)
	}
}

func TestApplyTrialConfirm(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	if s := m.firmware(); s != meta.SlotA {
		t.Fatalf("first boot starts slot %s", s)
	}
	d := m.prestage(meta.SlotA)
	if d.Action != Kexec || d.Slot != meta.SlotB {
		t.Fatalf("decision %+v, want kexec into b", d)
	}
	sl := m.slots()
	if sl.Phase != meta.PhaseTrial || sl.Trial != meta.SlotB || sl.TriesLeft != DefaultTries || sl.B.State != "trial" || sl.B.Version != "v2" || sl.Active != meta.SlotA {
		t.Fatalf("after apply: %+v", sl)
	}
	dk := m.open("")
	k, i, e, err := readSlot(ctx, dk.Loader, meta.SlotB)
	once, onceSet, _ := dk.Loader.BootOnce(ctx)
	def, _ := dk.Loader.Default(ctx)
	dk.Close()
	if err != nil || !bytes.Equal(k, m.v2kernel) || !bytes.Equal(i, m.v2initrd) {
		t.Fatalf("slot b holds other bytes than v2 (err %v)", err)
	}
	if !e.Counting || e.Left != DefaultTries || !strings.Contains(e.Cmdline, "stagehand.slot=b") || !strings.Contains(e.Cmdline, "quiet") {
		t.Errorf("slot b entry %+v", e)
	}
	if !onceSet || once != meta.SlotB || def != meta.SlotA {
		t.Errorf("boot once %v %s, default %s; want once b, default a", onceSet, once, def)
	}
	m.checkESP()

	// The kexec'd kernel's prestage counts the trial boot.
	if d := m.prestage(meta.SlotB); d.Action != Continue {
		t.Fatalf("trial boot: %+v", d)
	}
	if sl := m.slots(); sl.TriesLeft != DefaultTries-1 || sl.Phase != meta.PhaseTrial {
		t.Fatalf("after the trial boot: %+v", sl)
	}

	// stager confirm on slot b.
	dk = m.open(meta.SlotB)
	res, err := Confirm(ctx, &dk.Env)
	dk.Close()
	if err != nil || !res.Changed || res.Slot != meta.SlotB || res.Staged == nil {
		t.Fatalf("confirm: %+v, %v", res, err)
	}
	sl = m.slots()
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA || sl.B.State != "good" || sl.A.State != "good" || sl.LoaderDefault != meta.SlotB {
		t.Fatalf("after confirm: %+v", sl)
	}
	dk = m.open("")
	_, onceSet, _ = dk.Loader.BootOnce(ctx)
	def, _ = dk.Loader.Default(ctx)
	entries, _ := dk.Loader.Slots(ctx)
	dk.Close()
	if onceSet || def != meta.SlotB {
		t.Errorf("after confirm: boot once set %v, default %s", onceSet, def)
	}
	for _, e := range entries {
		if e.Counting {
			t.Errorf("entry %s still counts tries after confirm", e.Description)
		}
	}
	m.checkESP()
	// Idempotent.
	dk = m.open(meta.SlotB)
	res, err = Confirm(ctx, &dk.Env)
	dk.Close()
	if err != nil || res.Changed {
		t.Fatalf("second confirm: %+v, %v", res, err)
	}
	// Cold boot: the firmware starts b, prestage does nothing.
	if s := m.firmware(); s != meta.SlotB {
		t.Fatalf("cold boot after confirm starts slot %s", s)
	}
	if d := m.prestage(meta.SlotB); d.Action != Continue {
		t.Fatalf("boot after confirm: %+v", d)
	}
}

func TestTrialThatNeverConfirms(t *testing.T) {
	for _, tc := range []struct {
		name string
		// boots of b before the firmware brings a back
		run func(m *machine)
	}{
		{"panics twice: kexec, then boot-once", func(m *machine) {
			m.prestage(meta.SlotB) // kexec'd, then panics: reset
			if s := m.firmware(); s != meta.SlotB {
				m.t.Fatalf("after the first reset the firmware starts %s, want b (boot once)", s)
			}
			m.prestage(meta.SlotB) // panics again: reset
		}},
		{"dies before its prestage runs", func(m *machine) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t)
			if d := m.prestage(meta.SlotA); d.Action != Kexec {
				t.Fatalf("apply: %+v", d)
			}
			tc.run(m)
			if tc.name == "dies before its prestage runs" {
				if s := m.firmware(); s != meta.SlotB {
					t.Fatalf("firmware starts %s, want b once", s)
				}
			}
			s := m.firmware()
			if s != meta.SlotA {
				t.Fatalf("after the resets the firmware starts %s, want a", s)
			}
			if d := m.prestage(meta.SlotA); d.Action != Continue {
				t.Fatalf("back on a: %+v", d)
			}
			sl := m.slots()
			if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm") {
				t.Fatalf("after rollback: %+v", sl)
			}
			if r := m.lastReason(); !strings.Contains(r, "rolled back: slot b did not confirm: the machine came back to slot a") {
				t.Errorf("last transition: %q", r)
			}
			if s := m.firmware(); s != meta.SlotA {
				t.Errorf("the next cold boot starts %s", s)
			}
			m.checkESP()
			// Confirm on a, the good slot, is a no-op; rollback to the bad b is refused.
			dk := m.open(meta.SlotA)
			defer dk.Close()
			if _, err := Rollback(context.Background(), &dk.Env); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "does not hold a good image (bad: slot b did not confirm") {
				t.Errorf("rollback to a failed slot: %v", err)
			}
		})
	}
}

func TestTriesSpentOnTheTrialSlot(t *testing.T) {
	m := newMachine(t)
	m.prestage(meta.SlotA)
	for i := range DefaultTries {
		if d := m.prestage(meta.SlotB); d.Action != Continue {
			t.Fatalf("trial boot %d: %+v", i+1, d)
		}
	}
	d := m.prestage(meta.SlotB) // a third boot of b (say, chosen by hand): tries are spent
	if d.Action != Reboot || d.Slot != meta.SlotA {
		t.Fatalf("boot past the tries: %+v", d)
	}
	if sl := m.slots(); sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm within 2 boots") {
		t.Fatalf("%+v", sl)
	}
	if s := m.firmware(); s != meta.SlotA {
		t.Errorf("firmware starts %s", s)
	}
}

func TestCorruptPayloadIsRefused(t *testing.T) {
	m := newMachine(t)
	st, err := stage.ReadStatus(context.Background(), m.img)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := disk.Open(m.img, true)
	sr, _ := d.Find(disk.LabelSTAGE)
	sr.WriteAt([]byte("X"), st.Staged.Artifacts[0].Offset+100)
	d.Close()
	if dec := m.prestage(meta.SlotA); dec.Action != Continue || !strings.Contains(dec.Reason, "staged payload refused") {
		t.Fatalf("decision %+v", dec)
	}
	after, _ := stage.ReadStatus(context.Background(), m.img)
	if after.Staged != nil || after.Slots.Phase != meta.PhaseIdle || after.Slots.B.State != "" {
		t.Errorf("after the refusal: staged %+v, slots %+v", after.Staged, after.Slots)
	}
	if r := m.lastReason(); !strings.Contains(r, "sha256 is") {
		t.Errorf("reason %q does not say what was wrong", r)
	}
	dk := m.open("")
	entries, _ := dk.Loader.Slots(context.Background())
	dk.Close()
	if len(entries) != 1 {
		t.Errorf("slot b was written: %+v", entries)
	}
}

func TestIdleBootChangesNothing(t *testing.T) {
	m := newMachine(t)
	if _, err := stage.Cancel(context.Background(), m.img, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := hashFile(t, m.img)
	if d := m.prestage(meta.SlotA); d.Action != Continue || d.Reason != "nothing staged" {
		t.Fatalf("%+v", d)
	}
	if hashFile(t, m.img) != before {
		t.Error("an idle boot changed the disk")
	}
}

func TestManualRollback(t *testing.T) {
	m := newMachine(t)
	m.prestage(meta.SlotA)
	m.prestage(meta.SlotB)
	dk := m.open(meta.SlotB)
	if _, err := Confirm(context.Background(), &dk.Env); err != nil {
		t.Fatal(err)
	}
	dk.Close()
	dk = m.open(meta.SlotB)
	res, err := Rollback(context.Background(), &dk.Env)
	dk.Close()
	if err != nil || res.Slot != meta.SlotA {
		t.Fatalf("rollback: %+v %v", res, err)
	}
	if sl := m.slots(); sl.Active != meta.SlotA || sl.Previous != meta.SlotB || sl.LoaderDefault != meta.SlotA {
		t.Errorf("%+v", sl)
	}
	if s := m.firmware(); s != meta.SlotA {
		t.Errorf("after rollback the firmware starts %s", s)
	}
	m.checkESP()
}

// TestBadSlotChosenByHand: after a rollback, booting the bad slot from the
// menu is left alone (someone chose it), and the log says it is bad.
func TestBadSlotChosenByHand(t *testing.T) {
	m := newMachine(t)
	m.prestage(meta.SlotA)
	m.prestage(meta.SlotA) // the trial never came up: rolled back
	before := hashFile(t, m.img)
	d := m.prestage(meta.SlotB)
	if d.Action != Continue || !strings.Contains(d.Reason, "chosen by hand") || !strings.Contains(d.Reason, "slot b is marked bad: slot b did not confirm") {
		t.Fatalf("%+v", d)
	}
	if hashFile(t, m.img) != before {
		t.Error("a boot chosen by hand changed the disk")
	}
}

// TestSettledBootSkipsESP: a boot with nothing to do, of the active slot
// from its plain entry as systemd-boot records it, with META saying the
// bootloader was settled on that slot, does not read the ESP (a damaged
// one here goes unnoticed). Any of those not so, and it looks.
func TestSettledBootSkipsESP(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	if _, err := stage.Cancel(ctx, m.img, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s := m.firmware(); s != meta.SlotA {
		t.Fatalf("the firmware starts slot %s", s)
	}
	if sl := m.slots(); sl.LoaderDefault != meta.SlotA {
		t.Fatalf("a new disk's META: %+v; want the loader's default recorded", sl)
	}
	// The ESP's boot sector gone: opening the ESP fails.
	d, err := disk.Open(m.img, true)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp.WriteAt(make([]byte, 512), 0)
	d.Close()
	bootOnce := func(t *testing.T) (Decision, string) {
		t.Helper()
		dk := m.open(meta.SlotA)
		defer dk.Close()
		var logs []string
		dk.Logf = func(f string, args ...any) { logs = append(logs, fmt.Sprintf(f, args...)) }
		dec, err := Boot(ctx, &dk.Env)
		if err != nil {
			t.Fatalf("Boot: %v", err)
		}
		return dec, strings.Join(logs, "\n")
	}
	if dec, logs := bootOnce(t); dec.Action != Continue || dec.Reason != "nothing staged" || logs != "" {
		t.Fatalf("settled boot: %+v, logs %q; want nothing staged without looking at the ESP", dec, logs)
	}
	setVar := func(name, v string) func() error {
		return func() error {
			return efivar.SetString(m.vars, name, efivar.LoaderVendor, efivar.RuntimeAccess, v)
		}
	}
	setMarker := func(sl meta.Slot) func() error {
		return func() error {
			dk := m.open("")
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
	for _, tc := range []struct {
		name       string
		set, reset func() error
	}{
		{"counted entry", setVar(boot.CountPathVar, `\loader\entries\stagehand-a+1.conf`), func() error { return m.vars.Remove(boot.CountPathVar, efivar.LoaderVendor) }},
		{"nothing recorded", func() error { return m.vars.Remove(boot.SelectedVar, efivar.LoaderVendor) }, setVar(boot.SelectedVar, "stagehand-a.conf")},
		{"another entry", setVar(boot.SelectedVar, "stagehand-b.conf"), setVar(boot.SelectedVar, "stagehand-a.conf")},
		{"META not settled", setMarker(""), setMarker(meta.SlotA)},
		{"META settled on the other slot", setMarker(meta.SlotB), setMarker(meta.SlotA)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.set(); err != nil {
				t.Fatal(err)
			}
			dec, logs := bootOnce(t)
			if dec.Action != Continue || !strings.Contains(logs, "checking the default slot") {
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
