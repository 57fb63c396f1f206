package applytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// ErrCut stands for power failing: nothing after it is written. The cut
// stores panic with it; CutRun recovers it.
var ErrCut = errors.New("power cut")

// CutFS is an ESP whose At-th change (write, rename, remove, sync, a
// sector of an in-place write) never happens: the machine loses power just
// before it. N counts the changes asked for so far, with those of META
// (CutMETA) and of the EFI variables (CutVars) opened with it.
type CutFS struct {
	boot.FS
	At, N int
}

var _ boot.Overwriter = (*CutFS)(nil)

// Step counts a change and cuts the power before the At-th.
func (c *CutFS) Step(op string) {
	c.N++
	if c.N == c.At {
		panic(fmt.Errorf("%w before %s", ErrCut, op))
	}
}

func (c *CutFS) WriteFile(name string, r io.Reader) error {
	c.Step("writing " + name)
	return c.FS.WriteFile(name, r)
}

func (c *CutFS) Rename(from, to string) error {
	c.Step("renaming " + from)
	return c.FS.Rename(from, to)
}

func (c *CutFS) Remove(name string) error { c.Step("removing " + name); return c.FS.Remove(name) }

// OverwriteFile implements boot.Overwriter (GRUB's grubenv, written in
// place): a change for each 512-byte sector of the file the write
// changes, each durable before the next, so that the power can fail
// before the write or between two of its sectors (the first landed, the
// next not). Sectors the write leaves as they are make no change.
func (c *CutFS) OverwriteFile(name string, off int64, p []byte) error {
	ow, ok := c.FS.(boot.Overwriter)
	if !ok {
		return fmt.Errorf("the cut ESP's file system (%T) cannot write over %s in place", c.FS, name)
	}
	old, err := c.FS.ReadFile(name)
	if err != nil {
		return err
	}
	if off < 0 || off+int64(len(p)) > int64(len(old)) {
		return ow.OverwriteFile(name, off, p) // refused as it refuses it
	}
	for len(p) > 0 {
		n := min(int64(len(p)), sectorSize-off%sectorSize)
		if !bytes.Equal(old[off:off+n], p[:n]) {
			c.Step(fmt.Sprintf("overwriting %s at %d", name, off))
			if err := ow.OverwriteFile(name, off, p[:n]); err != nil {
				return err
			}
		}
		off, p = off+n, p[n:]
	}
	return nil
}

// sectorSize is the unit a disk writes whole.
const sectorSize = 512

func (c *CutFS) Sync() error { c.Step("sync"); return c.FS.Sync() }

// CutVars cuts before the k-th change of an EFI variable, counting with
// the ESP's changes.
type CutVars struct {
	Inner efivar.Store
	FS    *CutFS
}

func (c *CutVars) Get(name, vendor string) (uint32, []byte, error) { return c.Inner.Get(name, vendor) }

func (c *CutVars) Set(name, vendor string, attrs uint32, data []byte) error {
	c.FS.Step("setting " + name)
	return c.Inner.Set(name, vendor, attrs, data)
}

func (c *CutVars) Remove(name, vendor string) error {
	c.FS.Step("removing " + name)
	return c.Inner.Remove(name, vendor)
}

// CutMETA is a META partition that loses power before its At-th change
// (a copy's write or sync), counting with the ESP's changes: the cuts
// inside a META commit, and between a commit and the ESP or EFI variable
// change next to it (boot-once set, the trial not yet recorded).
type CutMETA struct {
	meta.Device
	FS *CutFS
}

func (c *CutMETA) WriteAt(p []byte, off int64) (int, error) {
	c.FS.Step(fmt.Sprintf("writing META at %d", off))
	return c.Device.WriteAt(p, off)
}

func (c *CutMETA) Sync() error { c.FS.Step("syncing META"); return c.Device.Sync() }

// OpenCut opens the machine's disk like Open, with the ESP, META and the
// EFI variables cut at their at-th change.
func (m *Machine) OpenCut(booted meta.Slot, at int) (*apply.Disk, *CutFS) {
	m.T.Helper()
	d := m.Open(booted)
	d.Close()
	dk, err := disk.Open(m.Img, true)
	if err != nil {
		m.T.Fatal(err)
	}
	metaR, err := dk.META()
	if err == nil {
		err = dk.Lock(context.Background(), true)
	}
	if err != nil {
		m.T.Fatal(err)
	}
	stageR, _ := dk.Find(disk.LabelSTAGE)
	espR, _ := dk.Find(disk.LabelESP)
	vol, err := fat.Open(espR, espR.Size)
	if err != nil {
		m.T.Fatal(err)
	}
	cf := &CutFS{FS: vol, At: at}
	store, err := meta.Load(&CutMETA{Device: metaR, FS: cf}, metaR.Name())
	if err != nil {
		m.T.Fatal(err)
	}
	env := d.Env
	env.Store, env.Stage, env.StageSize = store, stageR, stageR.Size
	if m.GRUB() {
		env.Loader = grub.New(cf, grub.WithCmdline(m.Cmdline(booted)))
	} else {
		env.Loader = systemdboot.New(cf, systemdboot.WithEFIVars(&CutVars{Inner: m.Vars, FS: cf}))
	}
	return &apply.Disk{Env: env, Disk: dk, STAGE: stageR}, cf
}

// CutRun runs fn on a disk cut at its at-th change and reports whether the
// cut happened (false: fn ran to the end).
func (m *Machine) CutRun(booted meta.Slot, at int, fn func(*apply.Disk)) (cut bool) {
	m.T.Helper()
	d, _ := m.OpenCut(booted, at)
	return m.RunCut(d, fn)
}

// RunCut runs fn on d, opened with a store or ESP that cuts the power, and
// reports whether the cut happened. d's disk is closed without a sync:
// what was not synced may be lost, and every step syncs.
func (m *Machine) RunCut(d *apply.Disk, fn func(*apply.Disk)) (cut bool) {
	m.T.Helper()
	defer func() {
		d.Disk.Close()
		if r := recover(); r != nil {
			err, ok := r.(error)
			if !ok || !errors.Is(err, ErrCut) {
				panic(r)
			}
			m.T.Logf("cut: %v", err)
			cut = true
		}
	}()
	fn(d)
	return false
}

// Settle boots the machine until it runs an OS that stays, confirming a
// trial slot when it runs if confirm is set (else the trial OS dies and
// the machine resets), and returns the slot it ends on.
func (m *Machine) Settle(confirm bool) meta.Slot {
	m.T.Helper()
	return m.SettleWith(func(meta.Slot, string) bool { return confirm })
}

// SettleWith is Settle with healthy deciding, for a trial slot and the
// version META gives it, whether its OS comes up and confirms.
func (m *Machine) SettleWith(healthy func(slot meta.Slot, version string) bool) meta.Slot {
	m.T.Helper()
	slot := m.Firmware()
	for range 8 {
		d := m.Prestage(slot)
		switch d.Action {
		case apply.Kexec:
			slot = d.Slot
			continue
		case apply.Reboot:
			slot = m.Firmware()
			continue
		}
		sl := m.Slots()
		if slot != sl.Active && (sl.Phase != meta.PhaseTrial || slot != sl.Trial) {
			// Nobody picks an entry by hand here: every boot must run
			// what META says (issue 16).
			m.T.Fatalf("a boot ran slot %s, which META holds neither active nor on trial: %+v (%s)", slot, sl, d.Reason)
		}
		if sl.Phase == meta.PhaseTrial && slot == sl.Trial {
			if !healthy(slot, sl.State(slot).Version) {
				slot = m.Firmware() // the trial OS dies: reset
				continue
			}
			if _, err := m.Confirm(slot); err != nil {
				m.T.Fatalf("confirm on %s: %v", slot, err)
			}
		}
		if m.Slots().Pending != "" {
			// Confirmed after a kexec: settled once the firmware has
			// started it (apply's pending.go).
			slot = m.Firmware()
			continue
		}
		return slot
	}
	m.T.Fatal("the machine did not settle in 8 boots")
	return ""
}

// CheckSettled checks a settled machine: META idle with the running slot
// active and good and recorded as the loader's default, the bootloader's
// default the same with an uncounted entry, and a clean ESP.
func (m *Machine) CheckSettled(slot meta.Slot) {
	m.T.Helper()
	sl := m.Slots()
	st := sl.State(slot)
	// LoaderDefault too: from here on the boots of slot skip the ESP.
	if sl.Phase != meta.PhaseIdle || sl.Active != slot || st.State != "good" || sl.LoaderDefault != slot {
		m.T.Fatalf("settled on %s but META says %+v", slot, sl)
	}
	dk := m.Open(slot)
	defer dk.Close()
	ctx := context.Background()
	if def, err := dk.Loader.Default(ctx); err != nil || def != slot {
		m.T.Fatalf("default %s, %v; want %s", def, err, slot)
	}
	if _, _, e, err := ReadSlot(ctx, dk.Loader, slot); err != nil || e.Counting {
		m.T.Fatalf("slot %s: %+v, %v", slot, e, err)
	}
	m.CheckESP()
}
