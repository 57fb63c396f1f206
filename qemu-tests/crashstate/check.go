package crashstate

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// Files is what a version's slot holds: the SHA-256 of its kernel and of
// its initramfs.
type Files struct{ Kernel, Initramfs [32]byte }

// FilesOf hashes a kernel and an initramfs.
func FilesOf(kernel, initramfs []byte) Files {
	return Files{sha256.Sum256(kernel), sha256.Sum256(initramfs)}
}

// Checker boots the crash states of one recording on the simulated
// machine (applytest) and checks each: META readable (at least one valid
// copy) with a generation no older than the last flush made durable; every
// slot the firmware starts holds one of the known versions' files intact;
// the machine settles (booting on, confirming a trial when it runs) on a
// slot META holds active and good, whose version is a known one and whose
// files are that version's; the bootloader agrees; fsck.fat -n is clean.
type Checker struct {
	T        testing.TB
	Base     string           // the image as it was when the recording started
	Rec      *Recording       // what happened to it
	Inputs   string           // the machine's input directory (Machine.Dir)
	Versions map[string]Files // the versions a slot may hold
	Name     string           // the scenario's, for saved states
	Keep     string           // when set, the directory failing states are saved in (Save)
	// ReadOnlyVars boots the states on firmware that takes no variable
	// writes at run time (applytest.Machine.ReadOnlyVars).
	ReadOnlyVars bool
	// Bootloader is the one the disk boots with
	// (applytest.Machine.Bootloader); "" finds it on the image
	// (applytest.DiskBootloader). On GRUB, the firmware's first start
	// from the cut image runs grub.cfg's choice (grub.Choose) on grubenv
	// as GRUB reads it, through the first FAT, and must boot the slot the
	// machine boots.
	Bootloader string

	dir     string
	durable *os.File // Base with the epochs before the current one applied
	epoch   int
	floor   uint64 // META generation of durable
	epochs  []Epoch
	n       int
	run     string // names this run's saved bases
}

// Failure is a state that did not pass, with why and the flow's log.
type Failure struct {
	State State
	Err   string
	Log   string
}

// Check checks the states, which must come in epoch order (as Generate
// makes them), and returns the failures.
func (c *Checker) Check(states []State) []Failure {
	c.T.Helper()
	if c.dir == "" {
		c.dir = c.T.TempDir()
		c.epochs = Epochs(c.Rec)
		c.epoch = -1
	}
	var fails []Failure
	for _, st := range states {
		if err := c.advance(st.Epoch); err != nil {
			c.T.Fatal(err)
		}
		if f := c.one(st); f != nil {
			fails = append(fails, *f)
		}
	}
	return fails
}

// advance makes durable the base with epochs before k applied.
func (c *Checker) advance(k int) error {
	if c.durable == nil || k < c.epoch {
		if c.durable != nil {
			c.durable.Close()
		}
		f, err := c.copyOf(c.Base, filepath.Join(c.dir, "durable.img"))
		if err != nil {
			return err
		}
		c.durable, c.epoch = f, 0
		c.T.Cleanup(func() { f.Close() })
	}
	changed := c.epoch != k || c.floor == 0
	for ; c.epoch < k; c.epoch++ {
		if err := Apply(c.durable, c.epochs[c.epoch].Writes()); err != nil {
			return err
		}
	}
	if changed {
		g, err := generation(c.durable.Name())
		if err != nil {
			return fmt.Errorf("the durable image before epoch %d: %w", k, err)
		}
		c.floor = g
	}
	return nil
}

func (c *Checker) copyOf(src, dst string) (*os.File, error) {
	s, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	fi, err := s.Stat()
	if err != nil {
		return nil, err
	}
	d, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := d.Truncate(fi.Size()); err == nil {
		err = applytest.CopySparse(d, s, 0, fi.Size())
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("copying %s: %w", src, err)
	}
	return d, nil
}

func generation(img string) (uint64, error) {
	d, err := disk.Open(img, false)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	r, err := d.META()
	if err != nil {
		return 0, err
	}
	s, err := meta.Load(r, r.Name())
	if err != nil {
		return 0, err
	}
	return s.Generation(), nil
}

// errState is a check failing: stateT's Fatal panics with it.
type errState struct{ msg string }

// stateT is the test the simulated machine of one state reports to: its
// log is kept for a failure, its Fatal ends the state's check.
type stateT struct {
	testing.TB
	log *strings.Builder
	dir string
	n   int
}

func (s *stateT) Helper()                   {}
func (s *stateT) Log(a ...any)              { fmt.Fprintln(s.log, a...) }
func (s *stateT) Logf(f string, a ...any)   { fmt.Fprintf(s.log, f+"\n", a...) }
func (s *stateT) Error(a ...any)            { s.Fatal(a...) }
func (s *stateT) Errorf(f string, a ...any) { s.Fatalf(f, a...) }
func (s *stateT) Fatal(a ...any)            { panic(errState{fmt.Sprint(a...)}) }
func (s *stateT) Fatalf(f string, a ...any) { panic(errState{fmt.Sprintf(f, a...)}) }
func (s *stateT) TempDir() string {
	s.n++
	d := filepath.Join(s.dir, fmt.Sprintf("tmp%d", s.n))
	if err := os.MkdirAll(d, 0o755); err != nil {
		panic(errState{err.Error()})
	}
	return d
}

func (c *Checker) one(st State) (fail *Failure) {
	c.n++
	dir := filepath.Join(c.dir, "state")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.T.Fatal(err)
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	f, err := c.copyOf(c.durable.Name(), img)
	if err == nil {
		err = Apply(f, st.Writes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		c.T.Fatal(err)
	}
	var pre string
	if c.Keep != "" {
		// The state as the cut left it, before the boot changes it.
		pre = img + ".cut"
		p, err := c.copyOf(img, pre)
		if err != nil {
			c.T.Fatal(err)
		}
		p.Close()
	}
	fail = c.boot(st, dir, img, c.Rec.Vars[st.VarIndex], c.floor)
	if fail != nil && pre != "" {
		c.save(pre, st)
	}
	return fail
}

// save keeps the state's image in c.Keep, as the sectors where it
// differs from the durable image of its epoch, saved once.
func (c *Checker) save(img string, st State) {
	name := strings.NewReplacer(" ", "-", ",", "").Replace(c.Name)
	what := fmt.Sprintf("%s: epoch %d, variables %d, %s of %d writes", c.Name, st.Epoch, st.VarIndex, st.Kind, len(st.Writes))
	if c.run == "" {
		var b [4]byte
		rand.Read(b[:])
		c.run = hex.EncodeToString(b[:]) // a run's bases never replace another's
	}
	base := fmt.Sprintf("%s-epoch%d-%s.base.gz", name, st.Epoch, c.run)
	p := filepath.Join(c.Keep, fmt.Sprintf("%s-%x.state.gz", name, st.Hash[:6]))
	err := os.MkdirAll(c.Keep, 0o755)
	if _, serr := os.Stat(filepath.Join(c.Keep, base)); err == nil && serr != nil {
		err = Save(filepath.Join(c.Keep, base), c.durable.Name(), c.Rec.Vars[st.VarIndex], c.floor, fmt.Sprintf("%s: durable before epoch %d", c.Name, st.Epoch), "", "")
	}
	if err == nil {
		err = Save(p, img, c.Rec.Vars[st.VarIndex], c.floor, what, c.durable.Name(), base)
	}
	if err != nil {
		c.T.Fatal(err)
	}
	c.T.Logf("saved %s", p)
}

// CheckSaved boots a saved state (Save) as Check boots a generated one.
func (c *Checker) CheckSaved(path string) *Failure {
	c.T.Helper()
	s, err := Load(path)
	if err != nil {
		c.T.Fatal(err)
	}
	dir := c.T.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := s.WriteImage(img); err != nil {
		c.T.Fatal(err)
	}
	return c.boot(State{Kind: s.What}, dir, img, s.Vars, s.Floor)
}

// boot runs the machine of one state, the image img with the variables
// vars, in dir, and checks it.
func (c *Checker) boot(st State, dir, img string, vv Vars, floor uint64) (fail *Failure) {
	t := &stateT{TB: c.T, log: &strings.Builder{}, dir: dir}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(errState)
			if !ok {
				panic(r)
			}
			fail = &Failure{State: st, Err: e.msg, Log: t.log.String()}
		}
	}()
	vars := filepath.Join(dir, "vars")
	if err := vv.Write(vars); err != nil {
		c.T.Fatal(err)
	}
	g, err := generation(img)
	if err != nil {
		t.Fatalf("META after the cut: %v", err)
	}
	if g < floor {
		t.Fatalf("META generation %d after the cut, older than %d, durable at the last flush", g, floor)
	}
	inputs := c.Inputs
	if inputs == "" {
		inputs = dir
	}
	bl := c.Bootloader
	if bl == "" {
		if bl, err = applytest.DiskBootloader(img); err != nil {
			t.Fatalf("the cut image's bootloader: %v", err)
		}
	}
	m := &applytest.Machine{T: t, Img: img, Vars: efivar.Dir(vars), Dir: inputs, Now: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC), ReadOnlyVars: c.ReadOnlyVars, Bootloader: bl}
	ctx := context.Background()
	// What the real firmware reads first is the ESP as the cut left it,
	// through its first FAT (EDK2's FAT driver reads that copy), before
	// any repair of stagehand's.
	fw := filepath.Join(dir, "firmware.img")
	if f, err := c.copyOf(img, fw); err != nil {
		c.T.Fatal(err)
	} else {
		f.Close()
	}
	first := true
	m.OnFirmware = func(d *apply.Disk, slot meta.Slot) {
		if first {
			first = false
			if err := firmwareView(ctx, fw, slot, m.GRUB(), c.known); err != nil {
				t.Fatalf("the firmware starts slot %s: %v", slot, err)
			}
			os.Remove(fw)
		}
		k, i, e, err := applytest.ReadSlot(ctx, d.Loader, slot)
		if err != nil {
			t.Fatalf("the firmware starts slot %s, which does not read: %v", slot, err)
		}
		if !c.known(FilesOf(k, i)) {
			t.Fatalf("the firmware starts slot %s (entry version %q), whose kernel and initramfs are no known version's", slot, e.Version)
		}
	}
	end := m.Settle(true)
	m.CheckSettled(end)
	sl := m.Slots()
	ver := sl.State(end).Version
	want, ok := c.Versions[ver]
	if !ok {
		t.Fatalf("settled on slot %s, version %q: neither the old nor the new", end, ver)
	}
	d := m.Open(end)
	k, i, _, err := applytest.ReadSlot(ctx, d.Loader, end)
	d.Close()
	if err != nil || FilesOf(k, i) != want {
		t.Fatalf("settled on slot %s (%s), whose files are not %s's (%v)", end, ver, ver, err)
	}
	return nil
}

// firmwareView reads slot's files from the image img as the firmware
// reads them: the ESP unrepaired, every FAT copy taken as the first one.
// On GRUB (onGRUB), it runs the script's choice there too (grub.Choose on
// grubenv, the entries that load), which must boot slot. It changes img.
func firmwareView(ctx context.Context, img string, slot meta.Slot, onGRUB bool, known func(Files) bool) error {
	d, err := disk.Open(img, false)
	if err != nil {
		return err
	}
	esp, err := d.Find(disk.LabelESP)
	d.Close()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, esp.Offset); err != nil {
		f.Close()
		return err
	}
	bps, reserved := int64(binary.LittleEndian.Uint16(bs[11:])), int64(binary.LittleEndian.Uint16(bs[14:]))
	nfats, fatSize := int64(bs[16]), int64(binary.LittleEndian.Uint32(bs[36:]))*int64(binary.LittleEndian.Uint16(bs[11:]))
	table := make([]byte, fatSize)
	_, err = f.ReadAt(table, esp.Offset+reserved*bps)
	for i := int64(1); err == nil && i < nfats; i++ {
		_, err = f.WriteAt(table, esp.Offset+(reserved*bps)+i*fatSize)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("taking the first FAT: %w", err)
	}
	d, err = disk.Open(img, false) // read-only: stagehand's repair cannot write
	if err != nil {
		return err
	}
	defer d.Close()
	if esp, err = d.Find(disk.LabelESP); err != nil {
		return err
	}
	fs, err := fat.Open(esp, esp.Size)
	if err != nil {
		return fmt.Errorf("the ESP as the cut left it (first FAT): %w", err)
	}
	if onGRUB {
		return grubView(ctx, fs, slot, known)
	}
	k, i, _, err := systemdboot.New(fs).ReadSlot(ctx, slot)
	if err != nil {
		return fmt.Errorf("its files as the cut left them (first FAT): %w", err)
	}
	if !known(FilesOf(k, i)) {
		return errors.New("its files as the cut left them (first FAT) are no known version's")
	}
	return nil
}

// grubView is firmwareView on GRUB: on the ESP as the cut left it, GRUB
// runs stagehand's grub.cfg (it must be the one the backend installs),
// whose choice (grub.Choose, on grubenv as it reads there; its save_env
// is not applied to this read-only view) boots the wanted slot's entry if
// it loads, else the other's (applytest.EntryLoads): that must be slot,
// with one of the known versions' files.
func grubView(ctx context.Context, fsys boot.FS, slot meta.Slot, known func(Files) bool) error {
	if err := applytest.CheckScript(fsys); err != nil {
		return fmt.Errorf("as the cut left the ESP (first FAT), GRUB does not run stagehand's choice: %w", err)
	}
	env, err := fsys.ReadFile(grub.EnvPath)
	if errors.Is(err, iofs.ErrNotExist) {
		env = nil
	} else if err != nil {
		return fmt.Errorf("GRUB reads %s as the cut left it (first FAT): %w", grub.EnvPath, err)
	}
	l := grub.New(fsys, grub.WithCmdline(""))
	c, _ := grub.Choose(env, true)
	c, ok := c.Run(func(s meta.Slot) bool { return applytest.EntryLoads(ctx, l, s) == nil })
	if !ok {
		return fmt.Errorf("as the cut left the ESP (first FAT), GRUB boots no slot (%s)", c)
	}
	if c.Booted() != slot {
		return fmt.Errorf("as the cut left the ESP (first FAT), GRUB boots slot %s (%s), not %s", c.Booted(), c, slot)
	}
	k, i, _, err := applytest.ReadSlot(ctx, l, slot)
	if err != nil {
		return fmt.Errorf("its files as the cut left them (first FAT): %w", err)
	}
	if !known(FilesOf(k, i)) {
		return errors.New("its files as the cut left them (first FAT) are no known version's")
	}
	return nil
}

func (c *Checker) known(f Files) bool {
	for _, w := range c.Versions {
		if w == f {
			return true
		}
	}
	return false
}

// ErrFailures marks a campaign with failing states.
var ErrFailures = errors.New("crash states failed")
