package grub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/grub/grubenv"
	"github.com/stagehand-dev/stagehand/meta"
)

// Where the backend keeps its files on the boot file system (boot.FS
// names, from its root).
const (
	CfgPath  = "grub/grub.cfg" // the script Render writes
	EnvPath  = "grub/grubenv"  // grubenv, beside it (Config.Env is "/" + EnvPath)
	slotsDir = "stagehand"     // stagehand/a/{vmlinuz,initrd,slot.cfg}
)

// The files of a slot, in its directory stagehand/a or stagehand/b.
const (
	kernelFile = "vmlinuz"
	initrdFile = "initrd"
	cfgFile    = "slot.cfg"
)

// TrialNone is stagehand_trial when no slot is on trial: one character,
// as long as a slot letter, and neither a nor b, which is all the script
// asks of "no trial" (package documentation, step 4).
const TrialNone = "-"

// VarArmed is kept after grubenv's sector pad, where GRUB never reads it
// (the script's load_env reads VarSlot, VarTrial and VarTries only): the
// tries given to the trial slot since it was first armed. The tries GRUB
// (and CountKexec) counted are VarArmed − VarTries: SlotEntry.Done.
const VarArmed = "stagehand_armed"

// Loader is the GRUB backend: slots a and b as kernel and initramfs files,
// booted by the stagehand grub.cfg (Render), which picks the slot from
// grubenv and counts a trial's tries there itself. On the boot file system:
//
//	grub/grub.cfg          Render's script, the same whatever the slots hold
//	grub/grubenv           GRUB's environment block, 1024 bytes
//	stagehand/a/vmlinuz    slot a's kernel
//	stagehand/a/initrd     slot a's initramfs
//	stagehand/a/slot.cfg   its command line, version and tries (slotCfg),
//	                       which slot a's menu entry sources
//	stagehand/b/...        the same for slot b
//
// grub.cfg is written by InstallLoader alone, and only when it changes,
// which is when stagehand itself is installed or upgraded; installing a
// slot writes the slot's files only. GRUB reads the FAT before anything
// can repair it, so what it needs to start the other slot is never
// rewritten while a slot is installed: a cut then leaves at worst the slot
// being installed unbootable, which is not on trial (InstallSlot ends a
// trial of it first) and, as the apply installs slots, not the default.
//
// How the boot.Backend interfaces map onto grubenv (package grubenv keeps
// the three variables GRUB reads in its first sector):
//
//   - the default (SetDefault, Default) is stagehand_slot;
//   - boot once (SetBootOnce) arms a trial: stagehand_trial is the slot,
//     stagehand_tries the tries its slot.cfg records (Image.Tries). GRUB
//     boots it at each start while tries are left, counting each down
//     before it boots it, then the default again: "once" is "until its
//     tries are used", as with systemd-boot's counted default
//     (boot.CountedDefault); the flow's own count of the trial's boots in
//     META bounds it the same either way. A kexec into the trial is
//     counted by CountKexec (boot.KexecCounter). ClearBootOnce, and Bless
//     of the trial slot, end the trial (stagehand_trial=TrialNone,
//     stagehand_tries=0);
//   - the trial slot's entry counts tries (SlotEntry.Counting): Left is
//     stagehand_tries, Done is VarArmed − stagehand_tries;
//   - the boot record (boot.BootRecord) is the stagehand.grub= parameter the
//     script puts on the command line (ChoiceParam); the script also puts
//     stagehand.partuuid= there (PartUUIDParam), by which prestage finds
//     the disk it booted from.
//
// grubenv is created once, by InstallLoader; every later write goes over it
// in place (boot.Overwriter), as GRUB's save_env writes through the blocks
// it found the file in: a file system without Overwriter is refused.
//
// A UKI cannot be installed: GRUB boots a kernel and an initramfs.
type Loader struct {
	fsys boot.FS

	cmdOnce sync.Once
	cmdline string // the running kernel's command line
	cmdSet  bool   // given by WithCmdline
}

var (
	_ boot.Backend      = (*Loader)(nil)
	_ boot.BootOnce     = (*Loader)(nil)
	_ boot.Blesser      = (*Loader)(nil)
	_ boot.SlotReader   = (*Loader)(nil)
	_ boot.BootRecord   = (*Loader)(nil)
	_ boot.KexecCounter = (*Loader)(nil)
)

// Option changes a Loader.
type Option func(*Loader)

// WithCmdline gives the running kernel's command line (prestage passes
// /proc/cmdline's), from which the boot record (ChoiceParam) is read.
// Without it, /proc/cmdline is read when first needed; "" if unreadable.
func WithCmdline(s string) Option {
	return func(l *Loader) { l.cmdline, l.cmdSet = s, true }
}

// New returns the GRUB backend for the boot file system fsys: the ESP's
// FAT on UEFI, the FAT boot partition GRUB reads on BIOS.
func New(fsys boot.FS, opts ...Option) *Loader {
	l := &Loader{fsys: fsys}
	for _, o := range opts {
		o(l)
	}
	return l
}

func (l *Loader) runningCmdline() string {
	l.cmdOnce.Do(func() {
		if !l.cmdSet {
			b, err := os.ReadFile("/proc/cmdline")
			if err == nil {
				l.cmdline = string(b)
			}
		}
	})
	return l.cmdline
}

func checkSlot(slot meta.Slot) error {
	if slot != meta.SlotA && slot != meta.SlotB {
		return fmt.Errorf("slot %q is not a or b", slot)
	}
	return nil
}

func slotFile(slot meta.Slot, file string) string {
	return path.Join(slotsDir, string(slot), file)
}

// config is what grub.cfg is rendered from: the fixed paths.
func config() Config {
	c := Config{Env: "/" + EnvPath}
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		s := Slot{
			Kernel:    "/" + slotFile(slot, kernelFile),
			Initramfs: "/" + slotFile(slot, initrdFile),
			Cfg:       "/" + slotFile(slot, cfgFile),
		}
		if slot == meta.SlotA {
			c.A = s
		} else {
			c.B = s
		}
	}
	return c
}

// readCfg reads slot's slot.cfg: an error wrapping boot.ErrSlotEmpty when
// it is absent, ErrBadSlotCfg when it does not parse.
func (l *Loader) readCfg(slot meta.Slot) (*slotCfg, error) {
	name := slotFile(slot, cfgFile)
	b, err := l.fsys.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("slot %s: %w (no %s)", slot, boot.ErrSlotEmpty, name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading slot %s: %w", slot, err)
	}
	c, err := parseSlotCfg(slot, b)
	if err != nil {
		return nil, fmt.Errorf("slot %s: %s: %w", slot, name, err)
	}
	return &c, nil
}

// cfgs reads both slots' slot.cfg; a slot without one, or with one that
// does not parse, is left out. Other errors (of the file system) are
// returned.
func (l *Loader) cfgs() (map[meta.Slot]*slotCfg, error) {
	out := map[meta.Slot]*slotCfg{}
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		c, err := l.readCfg(slot)
		switch {
		case errors.Is(err, boot.ErrSlotEmpty) || errors.Is(err, ErrBadSlotCfg):
			continue
		case err != nil:
			return nil, err
		}
		out[slot] = c
	}
	return out, nil
}

// writeCfg writes grub.cfg unless it holds cfg already: created if
// absent; else written beside it, synced and renamed over it, so that a
// cut leaves the old script or the new one, whole. The caller syncs.
func (l *Loader) writeCfg(cfg []byte) error {
	cur, err := l.fsys.ReadFile(CfgPath)
	switch {
	case err == nil && bytes.Equal(cur, cfg):
		return nil
	case errors.Is(err, fs.ErrNotExist):
		if err := l.fsys.WriteFile(CfgPath, bytes.NewReader(cfg)); err != nil {
			return fmt.Errorf("writing %s: %w", CfgPath, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("reading %s: %w", CfgPath, err)
	}
	tmp := CfgPath + ".new"
	if err := l.fsys.WriteFile(tmp, bytes.NewReader(cfg)); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := l.fsys.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := l.fsys.Rename(tmp, CfgPath); err != nil {
		return fmt.Errorf("replacing %s: %w", CfgPath, err)
	}
	return nil
}

// envState is what grubenv says, read as the script reads it.
type envState struct {
	slot  meta.Slot // stagehand_slot: "" when not a or b (GRUB boots a, mode noslot)
	trial meta.Slot // stagehand_trial: "" when not a or b (no trial)
	tries int       // stagehand_tries: 0 unless "1" to "9" (GRUB counts only those)
	armed int       // VarArmed: 0 when absent or not a number
}

// due tells whether GRUB boots the trial at its next start.
func (s envState) due() bool { return s.trial != "" && s.tries > 0 }

// done is how many of the trial's tries were counted.
func (s envState) done() int { return max(0, s.armed-s.tries) }

func stateOf(e *grubenv.Env) envState {
	var s envState
	slot := func(v string) meta.Slot {
		if v == string(meta.SlotA) || v == string(meta.SlotB) {
			return meta.Slot(v)
		}
		return ""
	}
	v, _ := e.Get(VarSlot)
	s.slot = slot(v)
	v, _ = e.Get(VarTrial)
	s.trial = slot(v)
	if v, _ = e.Get(VarTries); len(v) == 1 && v[0] >= '1' && v[0] <= '0'+MaxTries {
		s.tries = int(v[0] - '0')
	}
	if v, _ = e.Get(VarArmed); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			s.armed = n
		}
	}
	return s
}

// readEnv reads and parses grubenv: an error wrapping fs.ErrNotExist when
// it is absent, grubenv.ErrInvalid when it is not a valid block.
func (l *Loader) readEnv() ([]byte, *grubenv.Env, error) {
	b, err := l.fsys.ReadFile(EnvPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s is missing (InstallLoader creates it): %w", EnvPath, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", EnvPath, err)
	}
	e, err := grubenv.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", EnvPath, err)
	}
	return b, e, nil
}

func (l *Loader) state() (envState, error) {
	_, e, err := l.readEnv()
	if err != nil {
		return envState{}, err
	}
	return stateOf(e), nil
}

// overwriter is the file system as the writes of grubenv need it.
func (l *Loader) overwriter() (boot.Overwriter, error) {
	ow, ok := l.fsys.(boot.Overwriter)
	if !ok {
		return nil, fmt.Errorf("the GRUB backend's boot file system (%T) cannot write over a file in place (boot.Overwriter), as grubenv must be written: GRUB's save_env writes it through the disk blocks it found it in", l.fsys)
	}
	return ow, nil
}

// updateEnv changes grubenv in place, one write for each step that changes
// it, in order, each durable before the next (grubenv.Update, then
// OverwriteFile of the whole block at offset 0). The variables in the first
// sector change in place (SetFirst), so a cut during a write leaves each of
// the block's two sectors old or new, and the sector pad makes any mix a
// valid block; GRUB reads only the first sector's variables, which one
// sector's write changes all at once.
func (l *Loader) updateEnv(steps ...func(*grubenv.Env) error) error {
	ow, err := l.overwriter()
	if err != nil {
		return err
	}
	old, _, err := l.readEnv()
	if err != nil {
		return err
	}
	for _, step := range steps {
		b, err := grubenv.Update(old, step)
		if err != nil {
			return fmt.Errorf("updating %s: %w", EnvPath, err)
		}
		if b == nil {
			continue
		}
		if err := ow.OverwriteFile(EnvPath, 0, b); err != nil {
			return fmt.Errorf("updating %s: %w", EnvPath, err)
		}
		old = b
	}
	return nil
}

// setFirst is a step of updateEnv that sets first-sector variables,
// name and value in turn.
func setFirst(kv ...string) func(*grubenv.Env) error {
	return func(e *grubenv.Env) error {
		for i := 0; i < len(kv); i += 2 {
			if err := e.SetFirst(kv[i], kv[i+1]); err != nil {
				return err
			}
		}
		return nil
	}
}

// noTrial is the step that ends any trial.
var noTrial = setFirst(VarTrial, TrialNone, VarTries, "0")

// newEnv is the grubenv InstallLoader creates: slot a good, no trial.
func newEnv() ([]byte, error) {
	var e grubenv.Env
	if err := setFirst(VarSlot, string(meta.SlotA), VarTrial, TrialNone, VarTries, "0")(&e); err != nil {
		return nil, err
	}
	return e.MarshalBinary()
}

// InstallLoader implements boot.Backend. It does not install GRUB itself
// (its core image and modules): it writes what the stagehand GRUB boots
// from. grubenv, when absent, is created once, slot a good and no trial
// (written under another name, synced and renamed into place, so that a
// cut leaves no half-written block); a valid one is kept, given the
// first-sector variables it lacks (a grubenv of another tool: adopting it
// reshapes the block, which only InstallLoader does, before any trial). A
// grubenv that is not a valid block is refused, and nothing is written.
// grub.cfg, Render's script, is written when it differs from what is
// there (see writeCfg): it holds nothing of the slots, and only a new
// stagehand changes it.
func (l *Loader) InstallLoader(ctx context.Context) error {
	if _, err := l.overwriter(); err != nil {
		return err
	}
	_, e, err := l.readEnv()
	create := errors.Is(err, fs.ErrNotExist)
	switch {
	case errors.Is(err, grubenv.ErrInvalid):
		return fmt.Errorf("installing the GRUB configuration: %w; remove it to have a fresh one made", err)
	case err != nil && !create:
		return fmt.Errorf("installing the GRUB configuration: %w", err)
	}
	cfg, err := Render(config())
	if err != nil {
		return fmt.Errorf("installing the GRUB configuration: %w", err)
	}
	if create {
		b, err := newEnv()
		if err != nil {
			return err
		}
		tmp := EnvPath + ".new"
		if err := l.fsys.WriteFile(tmp, bytes.NewReader(b)); err != nil {
			return fmt.Errorf("installing the GRUB configuration: creating %s: %w", EnvPath, err)
		}
		if err := l.fsys.Sync(); err != nil {
			return fmt.Errorf("installing the GRUB configuration: creating %s: %w", EnvPath, err)
		}
		if err := l.fsys.Rename(tmp, EnvPath); err != nil {
			return fmt.Errorf("installing the GRUB configuration: creating %s: %w", EnvPath, err)
		}
	} else {
		var add []string
		for _, v := range [][2]string{{VarSlot, string(meta.SlotA)}, {VarTrial, TrialNone}, {VarTries, "0"}} {
			if _, ok := e.Get(v[0]); !ok {
				add = append(add, v[0], v[1])
			}
		}
		if err := l.updateEnv(setFirst(add...)); err != nil {
			return err
		}
	}
	if err := l.writeCfg(cfg); err != nil {
		return fmt.Errorf("installing the GRUB configuration: %w", err)
	}
	if err := l.fsys.Sync(); err != nil {
		return fmt.Errorf("installing the GRUB configuration: %w", err)
	}
	return nil
}

// slotCmdline is img's command line without the parameters the script
// sets: the slot's to say (SlotParam), the boot record (ChoiceParam) and
// the boot partition (PartUUIDParam), which Slots' command lines carry
// over from this boot and the apply may pass back.
func slotCmdline(s string) string {
	var keep []string
	for _, w := range strings.Fields(s) {
		switch k, _, _ := strings.Cut(w, "="); k {
		case SlotParam, ChoiceParam, PartUUIDParam:
		default:
			keep = append(keep, w)
		}
	}
	return strings.Join(keep, " ")
}

// InstallSlot implements boot.Backend: it writes img's kernel and
// initramfs to stagehand/X/vmlinuz and stagehand/X/initrd, then slot.cfg
// (version, command line, img.Tries: 0 is 1, more than MaxTries is
// MaxTries). grub.cfg is not written: the slot's entry sources slot.cfg.
// Everything is checked before anything is written. A trial of the slot
// is ended and its slot.cfg removed first, so that while it is written
// Slots does not list it and GRUB does not boot it (its entry boots the
// slot only when slot.cfg is there and whole, to its last line); slot.cfg,
// written after the kernel and initramfs are durable, completes it. A UKI
// is refused: UKIs need systemd-boot.
func (l *Loader) InstallSlot(ctx context.Context, slot meta.Slot, img boot.Image) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	fail := func(err error) error { return fmt.Errorf("installing slot %s: %w", slot, err) }
	if img.UKI != nil {
		return fail(errors.New("the GRUB backend boots a kernel and an initramfs, not a unified kernel image: UKIs need systemd-boot"))
	}
	if img.Kernel == nil || img.Initramfs == nil {
		return fail(errors.New("kernel and initramfs are both needed"))
	}
	if img.Tries < 0 {
		return fail(fmt.Errorf("%d tries", img.Tries))
	}
	cfg := slotCfg{Version: img.Version, Cmdline: slotCmdline(img.Cmdline), Tries: min(max(img.Tries, 1), MaxTries)}
	cfgBytes, err := cfg.marshal(slot)
	if err != nil {
		return fail(err)
	}
	if _, err := l.overwriter(); err != nil {
		return err
	}
	// grubenv may be absent (the loader not installed yet), not invalid.
	st, err := l.state()
	haveEnv := !errors.Is(err, fs.ErrNotExist)
	if err != nil && haveEnv {
		return fail(err)
	}

	if haveEnv && st.trial == slot {
		if err := l.updateEnv(noTrial); err != nil {
			return fail(err)
		}
	}
	if err := l.fsys.Remove(slotFile(slot, cfgFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	if err := l.fsys.Sync(); err != nil {
		return fail(err)
	}
	if err := l.fsys.WriteFile(slotFile(slot, kernelFile), img.Kernel); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.fsys.WriteFile(slotFile(slot, initrdFile), img.Initramfs); err != nil {
		return fail(err)
	}
	if err := l.fsys.Sync(); err != nil {
		return fail(err)
	}
	if err := l.fsys.WriteFile(slotFile(slot, cfgFile), bytes.NewReader(cfgBytes)); err != nil {
		return fail(err)
	}
	if err := l.fsys.Sync(); err != nil {
		return fail(err)
	}
	return nil
}

// SetDefault implements boot.Backend: stagehand_slot = slot, which must be
// installed.
func (l *Loader) SetDefault(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if _, err := l.readCfg(slot); err != nil {
		return fmt.Errorf("making slot %s the default: %w", slot, err)
	}
	if err := l.updateEnv(setFirst(VarSlot, string(slot))); err != nil {
		return fmt.Errorf("making slot %s the default: %w", slot, err)
	}
	return nil
}

// Default implements boot.Backend: stagehand_slot. A value other than a or
// b is an error (the script then boots slot a, mode noslot).
func (l *Loader) Default(ctx context.Context) (meta.Slot, error) {
	_, e, err := l.readEnv()
	if err != nil {
		return "", err
	}
	if s := stateOf(e); s.slot != "" {
		return s.slot, nil
	}
	v, ok := e.Get(VarSlot)
	if !ok {
		return "", fmt.Errorf("%s sets no %s: GRUB boots slot a (mode %s)", EnvPath, VarSlot, ModeNoSlot)
	}
	return "", fmt.Errorf("%s's %s is %q, not a or b: GRUB boots slot a (mode %s)", EnvPath, VarSlot, v, ModeNoSlot)
}

// SetBootOnce implements boot.BootOnce: it arms slot's trial, GRUB to boot
// it at its next start with the tries slot.cfg records (stagehand_trial =
// slot, stagehand_tries = tries), each counted by GRUB before it boots it.
// A trial of slot armed already is left as it is while it has tries left,
// and given its tries again, its count kept, once it has none: as
// systemd-boot's boot-once leaves a counted entry's counter alone, so that
// Done goes on counting every start of the slot since it was installed.
//
// The writes: VarArmed first, after the sector pad, then stagehand_trial
// and stagehand_tries together, in the first sector. GRUB reads only the
// first sector, which the second write changes at once (a sector is written
// whole or not at all), so after a cut GRUB either boots as before the
// call or boots the trial; only Done, read by stagehand, can be off, for
// the trial whose arming the cut interrupted, which the caller (which had
// not recorded it) arms again.
func (l *Loader) SetBootOnce(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	fail := func(err error) error { return fmt.Errorf("booting slot %s once: %w", slot, err) }
	conf, err := l.readCfg(slot)
	if err != nil {
		return fail(err)
	}
	st, err := l.state()
	if err != nil {
		return fail(err)
	}
	armed := conf.Tries
	switch {
	case st.trial == slot && st.tries > 0:
		return nil
	case st.trial == slot:
		armed += st.armed
	}
	err = l.updateEnv(
		func(e *grubenv.Env) error { return e.Set(VarArmed, strconv.Itoa(armed)) },
		setFirst(VarTrial, string(slot), VarTries, strconv.Itoa(conf.Tries)),
	)
	if err != nil {
		return fail(err)
	}
	return nil
}

// ClearBootOnce implements boot.BootOnce: no trial (stagehand_trial =
// TrialNone, stagehand_tries = 0), one write of the first sector.
func (l *Loader) ClearBootOnce(ctx context.Context) error {
	if err := l.updateEnv(noTrial); err != nil {
		return fmt.Errorf("clearing boot once: %w", err)
	}
	return nil
}

// BootOnce implements boot.BootOnce: the trial slot while it has tries
// left, which GRUB boots at its next start.
func (l *Loader) BootOnce(ctx context.Context) (meta.Slot, bool, error) {
	st, err := l.state()
	if err != nil {
		return "", false, err
	}
	if st.due() {
		return st.trial, true, nil
	}
	return "", false, nil
}

// Bless implements boot.Blesser: blessing the trial slot ends its trial,
// as ClearBootOnce does; any other slot's tries are not counted, and
// nothing is done.
func (l *Loader) Bless(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	st, err := l.state()
	if err != nil {
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	if st.trial != slot {
		return nil
	}
	if err := l.updateEnv(noTrial); err != nil {
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	return nil
}

// CountKexec implements boot.KexecCounter: when slot is the trial with
// tries left, one fewer, as GRUB counts the try of a start of it.
func (l *Loader) CountKexec(ctx context.Context, slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	st, err := l.state()
	if err != nil {
		return fmt.Errorf("counting the kexec into slot %s: %w", slot, err)
	}
	if st.trial != slot || st.tries == 0 {
		return nil
	}
	if err := l.updateEnv(setFirst(VarTries, strconv.Itoa(st.tries-1))); err != nil {
		return fmt.Errorf("counting the kexec into slot %s: %w", slot, err)
	}
	return nil
}

// Slots implements boot.Backend: the slots with a valid slot.cfg, a
// before b. The tries of the trial slot are counted (see Loader). A
// missing or invalid grubenv, which GRUB reads as no variables, is no
// trial.
func (l *Loader) Slots(ctx context.Context) ([]boot.SlotEntry, error) {
	cfgs, err := l.cfgs()
	if err != nil {
		return nil, err
	}
	st, err := l.state()
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, grubenv.ErrInvalid) {
		return nil, err
	}
	var out []boot.SlotEntry
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		if c := cfgs[slot]; c != nil {
			out = append(out, l.entry(slot, c, st))
		}
	}
	return out, nil
}

// entry is slot's SlotEntry. Its command line is what the script passes,
// in the same order, but for the boot record and the boot partition: a
// kexec into it (which passes it) then carries this boot's stagehand.grub=
// and stagehand.partuuid= on, when they are well formed, so that the
// kexec'd kernel knows the firmware boot it came from, as it knows
// systemd-boot's by LoaderEntrySelected, and the disk it came from.
func (l *Loader) entry(slot meta.Slot, c *slotCfg, st envState) boot.SlotEntry {
	words := []string{}
	if c.Cmdline != "" {
		words = append(words, c.Cmdline)
	}
	words = append(words, SlotParam+"="+string(slot))
	running := l.runningCmdline()
	if v, ok := cmdline.Get(running, ChoiceParam); ok {
		if _, err := ParseChoice(v); err == nil {
			words = append(words, ChoiceParam+"="+v)
		}
	}
	if v, ok := cmdline.Get(running, PartUUIDParam); ok && isGUID(v) {
		words = append(words, PartUUIDParam+"="+v)
	}
	e := boot.SlotEntry{
		Slot:        slot,
		Version:     c.Version,
		Cmdline:     strings.Join(words, " "),
		Kernel:      "/" + slotFile(slot, kernelFile),
		Initrd:      "/" + slotFile(slot, initrdFile),
		Description: fmt.Sprintf("%s menu entry 'stagehand slot %s'", CfgPath, slot),
	}
	if st.trial == slot {
		e.Counting, e.Left, e.Done = true, st.tries, st.done()
	}
	return e
}

// OpenSlot implements boot.SlotReader: the kernel and initramfs of an
// installed slot (boot.ErrSlotEmpty without slot.cfg), opened for
// streaming.
func (l *Loader) OpenSlot(ctx context.Context, slot meta.Slot) (*boot.SlotFiles, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	c, err := l.readCfg(slot)
	if err != nil {
		return nil, err
	}
	st, err := l.state()
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, grubenv.ErrInvalid) {
		return nil, err
	}
	f := &boot.SlotFiles{Entry: l.entry(slot, c, st)}
	open := func(file, what string) (io.Reader, error) {
		r, err := l.fsys.Open(slotFile(slot, file))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("reading slot %s's %s: %w", slot, what, err)
		}
		f.Closers = append(f.Closers, r)
		return r, nil
	}
	if f.Kernel, err = open(kernelFile, "kernel"); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		f.Close()
		return nil, err
	}
	if f.Initramfs, err = open(initrdFile, "initramfs"); err != nil {
		return nil, err
	}
	return f, nil
}

// isGUID tells whether v is a GUID, as GRUB's probe --part-uuid writes a
// GPT partition's: 8-4-4-4-12 hexadecimal digits (lower-case from GRUB).
func isGUID(v string) bool {
	if len(v) != 36 {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return true
}
