package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
)

// errCut stands for power failing: nothing after it is written.
var errCut = errors.New("power cut")

// cutFS is an ESP whose k-th change (write, rename, remove, sync) never
// happens: the machine loses power just before it.
type cutFS struct {
	boot.FS
	at, n int
}

func (c *cutFS) step(op string) {
	c.n++
	if c.n == c.at {
		panic(fmt.Errorf("%w before %s", errCut, op))
	}
}

func (c *cutFS) WriteFile(name string, r io.Reader) error {
	c.step("writing " + name)
	return c.FS.WriteFile(name, r)
}
func (c *cutFS) Rename(from, to string) error {
	c.step("renaming " + from)
	return c.FS.Rename(from, to)
}
func (c *cutFS) Remove(name string) error { c.step("removing " + name); return c.FS.Remove(name) }
func (c *cutFS) Sync() error              { c.step("sync"); return c.FS.Sync() }

// cutVars cuts before the k-th change of an EFI variable, counting with the
// ESP's changes.
type cutVars struct {
	inner interface {
		Get(name, vendor string) (uint32, []byte, error)
		Set(name, vendor string, attrs uint32, data []byte) error
		Remove(name, vendor string) error
	}
	fs *cutFS
}

func (c *cutVars) Get(name, vendor string) (uint32, []byte, error) { return c.inner.Get(name, vendor) }
func (c *cutVars) Set(name, vendor string, attrs uint32, data []byte) error {
	c.fs.step("setting " + name)
	return c.inner.Set(name, vendor, attrs, data)
}
func (c *cutVars) Remove(name, vendor string) error {
	c.fs.step("removing " + name)
	return c.inner.Remove(name, vendor)
}

// openCut opens the machine's disk like Open, with the ESP and the EFI
// variables cut at their k-th change.
func (m *machine) openCut(booted meta.Slot, at int) (*Disk, *cutFS) {
	m.t.Helper()
	d := m.open(booted)
	d.Close()
	store, dk, err := disk.OpenMETA(context.Background(), m.img, true)
	if err != nil {
		m.t.Fatal(err)
	}
	stageR, _ := dk.Find(disk.LabelSTAGE)
	espR, _ := dk.Find(disk.LabelESP)
	fat, err := boot.OpenESP(espR, espR.Size)
	if err != nil {
		m.t.Fatal(err)
	}
	cf := &cutFS{FS: fat, at: at}
	env := d.Env
	env.Store, env.Stage, env.StageSize = store, stageR, stageR.Size
	env.Loader = boot.NewSystemdBoot(cf, boot.WithEFIVars(&cutVars{inner: m.vars, fs: cf}))
	return &Disk{Env: env, Disk: dk, STAGE: stageR}, cf
}

// cutRun runs fn on a disk cut at its k-th change and reports whether the
// cut happened (false: fn ran to the end).
func (m *machine) cutRun(booted meta.Slot, at int, fn func(*Disk)) (cut bool) {
	m.t.Helper()
	d, _ := m.openCut(booted, at)
	defer func() {
		d.Disk.Close() // no sync: what was not synced may be lost, and every step syncs
		if r := recover(); r != nil {
			err, ok := r.(error)
			if !ok || !errors.Is(err, errCut) {
				panic(r)
			}
			m.t.Logf("cut %d: %v", at, err)
			cut = true
		}
	}()
	fn(d)
	return false
}

// settle boots the machine until it runs an OS that stays, confirming b
// when it runs if confirm is set, and returns the slot it ends on.
func (m *machine) settle(confirm bool) meta.Slot {
	m.t.Helper()
	slot := m.firmware()
	for range 8 {
		d := m.prestage(slot)
		switch d.Action {
		case Kexec:
			slot = d.Slot
			continue
		case Reboot:
			slot = m.firmware()
			continue
		}
		sl := m.slots()
		if sl.Phase == meta.PhaseTrial && slot == sl.Trial {
			if !confirm {
				slot = m.firmware() // the trial OS dies: reset
				continue
			}
			dk := m.open(slot)
			_, err := Confirm(context.Background(), &dk.Env)
			dk.Close()
			if err != nil {
				m.t.Fatalf("confirm on %s: %v", slot, err)
			}
		}
		return slot
	}
	m.t.Fatal("the machine did not settle in 8 boots")
	return ""
}

// checkSettled checks a settled machine: META idle with the running slot
// active and good, the bootloader's default the same and readable, and a
// clean ESP.
func (m *machine) checkSettled(slot meta.Slot) {
	m.t.Helper()
	sl := m.slots()
	st := sl.A
	if slot == meta.SlotB {
		st = sl.B
	}
	// LoaderDefault too: from here on the boots of slot skip the ESP.
	if sl.Phase != meta.PhaseIdle || sl.Active != slot || st.State != "good" || sl.LoaderDefault != slot {
		m.t.Fatalf("settled on %s but META says %+v", slot, sl)
	}
	dk := m.open(slot)
	defer dk.Close()
	ctx := context.Background()
	if def, err := dk.Loader.Default(ctx); err != nil || def != slot {
		m.t.Fatalf("default %s, %v; want %s", def, err, slot)
	}
	if _, _, e, err := readSlot(ctx, dk.Loader, slot); err != nil || e.Counting {
		m.t.Fatalf("slot %s: %+v, %v", slot, e, err)
	}
	m.checkESP()
}

// TestCutDuringApply cuts the power before every change the apply makes to
// the ESP and the EFI variables (its META commits sit between them), then
// boots on: the machine always ends on v1 or v2, consistent, whether v2
// confirms or never does.
func TestCutDuringApply(t *testing.T) {
	for _, confirm := range []bool{true, false} {
		for at := 1; ; at++ {
			m := newMachine(t)
			cut := m.cutRun(meta.SlotA, at, func(d *Disk) {
				if _, err := Boot(context.Background(), &d.Env); err != nil {
					t.Fatal(err)
				}
			})
			end := m.settle(confirm)
			want := meta.SlotA
			if confirm {
				want = meta.SlotB
			}
			if end != want {
				t.Fatalf("cut %d (confirm %v): settled on %s, want %s", at, confirm, end, want)
			}
			m.checkSettled(end)
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
		m := newMachine(t)
		m.prestage(meta.SlotA)
		m.prestage(meta.SlotB)
		cut := m.cutRun(meta.SlotB, at, func(d *Disk) {
			if _, err := Confirm(context.Background(), &d.Env); err != nil {
				t.Fatal(err)
			}
		})
		end := m.settle(false)
		if end != meta.SlotB {
			t.Fatalf("cut %d during confirm: settled on %s", at, end)
		}
		m.checkSettled(end)
		if !cut {
			t.Logf("%d cut points in confirm, all settle on b", at-1)
			return
		}
	}
}
