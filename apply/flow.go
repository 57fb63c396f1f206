package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// DefaultTries is how many boots a trial slot gets to confirm: the kexec
// into it, and one more through the firmware's boot-once after a reset.
const DefaultTries = 2

// Stage is the STAGE partition.
type Stage interface {
	io.ReaderAt
}

// Env is what the boot flow works on.
type Env struct {
	Store     *meta.Store
	Stage     Stage
	StageSize int64
	Loader    boot.Loader
	Booted    meta.Slot // the slot the running kernel came from; "" when unknown
	Tries     int       // boots a trial gets; 0 means DefaultTries
	// SecureBoot: the firmware enforces Secure Boot, so it refuses to
	// start a UKI that is not signed with a key it trusts.
	SecureBoot bool
	// Databases returns the sha256 of the firmware's Secure Boot
	// databases db and dbx (efivar.SHA256), asked only when a trial
	// starts under Secure Boot: it is kexec'd only when its payload was
	// checked against these at staging (meta.FirmwareCheck).
	Databases func() (db, dbx string, err error)
	// TPMSealed names where the OS keeps a secret sealed to the TPM's
	// measurements of a firmware boot (a LUKS2 volume with a systemd-tpm2
	// token: disk.Disk.TPM2Sealed), "" when nowhere; asked only when a
	// trial starts. nil: not known.
	TPMSealed func() (string, error)
	Now       func() time.Time
	Logf      func(format string, args ...any)
}

func (e *Env) defaults() {
	if e.Tries <= 0 {
		e.Tries = DefaultTries
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Logf == nil {
		e.Logf = func(string, ...any) {}
	}
}

// Action is what the pre-stage init does after Boot.
type Action int

// The actions.
const (
	Continue Action = iota // hand off to the OS's init: this slot boots
	Kexec                  // kexec into Decision.Slot (reboot through the firmware when kexec is unavailable)
	Reboot                 // reboot through the firmware
)

func (a Action) String() string {
	return [...]string{"continue", "kexec", "reboot"}[a]
}

// Decision says what to do next and why.
type Decision struct {
	Action Action
	Slot   meta.Slot // for Kexec
	Reason string
	// Dropped is a payload META no longer refers to (refused, or rolled
	// back), whose bytes in STAGE the caller clears.
	Dropped *meta.Staged
}

// state is one loaded META block with its records, changed and committed
// by the steps of the flow.
type state struct {
	env    *Env
	block  *meta.Block
	slots  *meta.Slots
	staged *meta.Staged
	// what the bootloader says it booted, once read (bootedEntry)
	entry                 meta.Slot
	entryKnown, entryRead bool
}

func load(env *Env) (*state, error) {
	b := env.Store.Block()
	slots, err := b.Slots()
	if err != nil {
		return nil, fmt.Errorf("META: %w", err)
	}
	st := &state{env: env, block: b, slots: slots}
	if st.staged, _, err = b.Staged(); err != nil {
		env.Logf("the staged record is damaged, dropping it: %v", err)
		st.staged = nil
		b.Delete(meta.TagStaged)
	}
	return st, nil
}

// commit records the change of phase with its reason and writes META: the
// transition is durable before the caller acts on it.
func (s *state) commit(to meta.Phase, slot meta.Slot, reason string) error {
	from := s.slots.Phase
	s.slots.Phase = to
	if err := s.block.SetSlots(s.slots); err != nil {
		return err
	}
	if s.staged != nil {
		if err := s.block.SetStaged(s.staged); err != nil {
			return err
		}
	} else {
		s.block.Delete(meta.TagStaged)
	}
	if err := s.block.AddTransition(meta.Transition{Time: s.env.Now().UTC(), From: from, To: to, Slot: slot, Reason: reason}); err != nil {
		return err
	}
	s.env.Logf("%s → %s (slot %s): %s", from, to, slot, reason)
	if err := s.env.Store.Commit(s.block); err != nil {
		return err
	}
	s.block = s.env.Store.Block()
	return nil
}

// bootedEntry is the slot whose entry the bootloader says it booted
// (BootRecord), read once a boot and only when needed: a settled boot does
// not ask.
func (s *state) bootedEntry(ctx context.Context) (meta.Slot, bool) {
	if !s.entryRead {
		s.entryRead = true
		if br, ok := s.env.Loader.(boot.BootRecord); ok {
			var err error
			if s.entry, s.entryKnown, err = br.BootedSlot(ctx); err != nil {
				s.env.Logf("%v", err)
			}
		}
	}
	return s.entry, s.entryKnown
}

// running is the slot the running kernel came from: Env.Booted (its
// stagehand.slot=), else, as for a UKI booted by the firmware, whose
// command line names no slot, the entry the bootloader says it booted; ""
// when neither says.
func (s *state) running(ctx context.Context) meta.Slot {
	if s.env.Booted != "" {
		return s.env.Booted
	}
	slot, _ := s.bootedEntry(ctx)
	return slot
}

// Boot runs the pre-stage step of the flow for this boot and says what to
// do next. An error means META could not be read or written: the caller
// logs it and continues the normal boot.
func Boot(ctx context.Context, env *Env) (Decision, error) {
	env.defaults()
	s, err := load(env)
	if err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}
	booted := s.running(ctx)
	if booted == "" {
		booted = s.slots.Active
	}
	if s.settled(ctx, booted) {
		return Decision{Action: Continue, Reason: "nothing staged"}, nil
	}
	if s.slots.Pending != "" {
		if d, stop, err := s.pendingBoot(ctx, booted); stop {
			return d, err
		}
	}
	// The default this boot was made with, before it is put right.
	def, defErr := env.Loader.Default(ctx)
	repaired := false
	if err := s.reconcileDefault(ctx, def, defErr); err != nil {
		env.Logf("checking the default slot: %v", err)
	} else {
		repaired = true
		if err := s.loaderSettled(ctx); err != nil {
			env.Logf("recording the bootloader's default in META: %v", err)
		}
	}
	switch s.slots.Phase {
	case meta.PhaseStaged, meta.PhaseApplying:
		return s.apply(ctx, booted)
	case meta.PhaseTrial:
		return s.trialBoot(ctx, booted)
	}
	if booted != s.slots.Active {
		return s.offActive(ctx, booted, def, repaired)
	}
	return Decision{Action: Continue, Reason: "nothing staged"}, nil
}

// offActive handles a boot, with nothing staged or on trial, of the slot
// that META does not hold active. A person who picked it in the boot menu
// is left alone. A boot the bootloader made by a default that a cut left
// behind META (confirm or rollback committed, the ESP's new default not yet
// durable) goes on to the active slot in the same boot, the default put
// right first: once META records a slot active, no later boot runs the
// other unasked. def is the default this boot was made with; repaired
// tells that the ESP's default is the active slot now, so that a firmware
// reboot (kexec unavailable) cannot come back here.
func (s *state) offActive(ctx context.Context, booted, def meta.Slot, repaired bool) (Decision, error) {
	active := s.slots.Active
	hand := fmt.Sprintf("booted slot %s, the default is %s: chosen by hand, left alone", booted, active)
	if st := s.slots.State(booted); st.State == "bad" {
		hand += fmt.Sprintf(" (slot %s is marked bad: %s)", booted, st.Reason)
	}
	if def != booted {
		return Decision{Action: Continue, Reason: hand}, nil
	}
	if sel, known := s.bootedEntry(ctx); !known || sel != booted {
		// The bootloader does not say it booted its default: someone
		// may have picked this entry.
		return Decision{Action: Continue, Reason: hand}, nil
	}
	as := s.slots.State(active)
	if as.State != "good" || !repaired {
		return Decision{Action: Continue, Reason: fmt.Sprintf("booted slot %s by the bootloader's default, which lags META's active slot %s (%s); the default could not be put right, so this boot runs slot %s", booted, active, as.State, booted)}, nil
	}
	reason := fmt.Sprintf("booted slot %s by a stale default: META holds slot %s active (%s) since a change whose bootloader update a cut lost; the default is slot %s again, going on to it", booted, active, as.Version, active)
	if err := s.commit(meta.PhaseIdle, active, reason); err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}
	return Decision{Action: Kexec, Slot: active, Reason: reason}, nil
}

// settled tells whether this boot needs nothing of the ESP, as most boots
// do: nothing to apply or try; META says the bootloader's default was made
// the active slot, blessed and without boot-once (LoaderDefault), and
// nothing since changed the active slot; and the bootloader says this boot
// came from the active slot's plain entry, so nobody changed its default or
// picked an entry by hand. Such a boot does not read the ESP's FAT.
func (s *state) settled(ctx context.Context, booted meta.Slot) bool {
	if s.slots.Phase != meta.PhaseIdle || s.slots.LoaderDefault != s.slots.Active || booted != s.slots.Active {
		return false
	}
	br, ok := s.env.Loader.(boot.BootRecord)
	if !ok {
		return false
	}
	plain, err := br.BootedPlain(ctx, booted)
	if err != nil {
		s.env.Logf("%v; checking the bootloader's default on the ESP", err)
	}
	return plain
}

// loaderSettled records in META that the bootloader now boots the active
// slot by default, blessed, with no boot-once (see settled); the caller
// has made it so and synced the ESP. It writes only when that is news.
func (s *state) loaderSettled(ctx context.Context) error {
	if s.slots.Phase != meta.PhaseIdle || s.slots.LoaderDefault == s.slots.Active || s.slots.Pending != "" {
		return nil
	}
	if _, once, err := s.env.Loader.BootOnce(ctx); err != nil || once {
		return err // a boot-once left: the next boot looks again
	}
	s.slots.LoaderDefault = s.slots.Active
	if err := s.block.SetSlots(s.slots); err != nil {
		return err
	}
	if err := s.env.Store.Commit(s.block); err != nil {
		return err
	}
	s.block = s.env.Store.Block()
	return nil
}

// reconcileDefault makes the bootloader's default the slot META names
// active: a cut between a META commit and the bootloader change it
// announced is finished here. While a slot is firmware start pending, the default is the previous
// slot, its fallback.
func (s *state) reconcileDefault(ctx context.Context, def meta.Slot, err error) error {
	if err != nil {
		return err
	}
	if s.slots.Pending != "" {
		if def == s.slots.Previous || def == s.slots.Pending && s.countedDefault(ctx) {
			return nil
		}
		s.env.Logf("the bootloader's default is slot %s; slot %s is firmware start pending, so the default is slot %s, its fallback: setting it", def, s.slots.Pending, s.slots.Previous)
		return s.env.Loader.SetDefault(ctx, s.slots.Previous)
	}
	if def == s.slots.Active || s.slots.Phase == meta.PhaseTrial && def == s.slots.Trial && s.countedDefault(ctx) {
		return nil
	}
	s.env.Logf("the bootloader's default is slot %s, META's active slot is %s: setting it", def, s.slots.Active)
	if err := s.env.Loader.SetDefault(ctx, s.slots.Active); err != nil {
		return err
	}
	if st := s.slots.State(s.slots.Active); st.State == "good" {
		return s.env.Loader.Bless(ctx, s.slots.Active)
	}
	return nil
}

// refuse drops the staged payload, records why, and lets this slot boot.
func (s *state) refuse(reason string) (Decision, error) {
	dropped := s.staged
	s.staged = nil
	s.block.Delete(meta.TagTalosStagedImageRef)
	if err := s.commit(meta.PhaseIdle, "", reason); err != nil {
		return Decision{Action: Continue, Reason: reason}, err
	}
	return Decision{Action: Continue, Reason: reason, Dropped: dropped}, nil
}

// apply writes the staged payload to its target slot and arms the trial.
func (s *state) apply(ctx context.Context, booted meta.Slot) (Decision, error) {
	st := s.staged
	if st == nil {
		return s.refuse("META says an upgrade is staged but holds no staged record")
	}
	target := st.Target
	if target == booted && s.slots.Phase == meta.PhaseApplying {
		return s.backToActive(ctx, target)
	}
	if target == booted {
		return s.refuse(fmt.Sprintf("the staged upgrade targets slot %s, the slot this system booted from: not applied", target))
	}
	if err := payload.Verify(s.env.Stage, s.env.StageSize, st.Artifacts); err != nil {
		var ve *payload.VerifyError
		if errors.As(err, &ve) {
			return s.refuse("staged payload refused: " + err.Error())
		}
		return Decision{Action: Continue, Reason: err.Error()}, err // an I/O error: try again next boot
	}
	img, check, why := s.image(st)
	if why != "" {
		return s.refuse("staged payload refused: " + why)
	}

	// Announce the write: the target is bad until it is written and checked.
	ts := s.slots.State(target)
	reason := fmt.Sprintf("writing %s (%s) to slot %s", st.Image, short(st.Digest), target)
	if s.slots.Phase == meta.PhaseApplying {
		reason = "again, after an interrupted apply: " + reason
	}
	*ts = meta.SlotState{State: "bad", Digest: st.Digest, Reason: "being written"}
	if err := s.commit(meta.PhaseApplying, target, reason); err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}

	if img.UKI == nil {
		img.Cmdline = s.cmdlineFor(ctx, st)
	}
	fail := func(what string, err error) (Decision, error) {
		// The target stays bad and the phase applying: the next boot
		// tries again from the payload; this one boots as it is.
		ts.Reason = fmt.Sprintf("%s: %v", what, err)
		if cerr := s.commit(meta.PhaseApplying, target, "apply failed, retried at the next boot: "+ts.Reason); cerr != nil {
			s.env.Logf("recording the failure: %v", cerr)
		}
		return Decision{Action: Continue, Reason: ts.Reason}, fmt.Errorf("applying to slot %s: %s: %w", target, what, err)
	}
	if err := s.env.Loader.InstallSlot(ctx, target, img); err != nil {
		return fail("writing the slot", err)
	}
	f, err := s.env.Loader.OpenSlot(ctx, target)
	if err != nil {
		return fail("reading the slot back", err)
	}
	err = check(f)
	f.Close()
	if err != nil {
		return fail("checking the slot", err)
	}
	// Boot once into the target: what the firmware does if kexec cannot,
	// and the second try after a reset; and a second start of the
	// bootloader, should the firmware be unable to load the target.
	if err := s.ensureFallback(ctx); err != nil {
		s.env.Logf("%v", err)
	}
	if err := s.armFirmwareStart(ctx, target); err != nil {
		if !efivar.ReadOnly(err) {
			return fail("setting boot-once", err)
		}
		// Firmware without runtime variable writes, and no counted
		// default: the trial is armed without either. The kexec tries
		// the slot; where it cannot, the firmware starts the active
		// slot, which arms it again and gives it up after MaxRearm,
		// saying why.
		s.env.Logf("arming slot %s: %v: arming the trial without boot-once", target, err)
	}
	*ts = meta.SlotState{State: "trial", Version: img.Version, Digest: st.Digest}
	s.slots.Trial, s.slots.TriesLeft, s.slots.Rearmed = target, s.env.Tries, 0
	s.block.Delete(meta.TagTalosStagedImageRef)
	if err := s.commit(meta.PhaseTrial, target, fmt.Sprintf("slot %s written and checked; trying %s with %d boots to confirm", target, img.Version, s.env.Tries)); err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}
	return s.tryTrial(target, "trying slot "+string(target)), nil
}

// tryTrial is the decision that starts the trial of slot: a kexec, unless
// the firmware must check the slot itself (firmwareOnly): then a reboot,
// which boot-once sends into the slot.
func (s *state) tryTrial(slot meta.Slot, reason string) Decision {
	if why := s.firmwareOnly(); why != "" {
		return Decision{Action: Reboot, Slot: slot, Reason: reason + " through the firmware, not by kexec: " + why}
	}
	return Decision{Action: Kexec, Slot: slot, Reason: reason}
}

// firmwareOnly says why the trial must not be kexec'd: the OS relies on a
// TPM-sealed secret (a kexec does not reset the PCRs); or, under Secure
// Boot, the payload was not checked at staging against the databases the
// firmware holds now (a kexec checks only the kernel, the firmware the
// whole image against db and dbx). "" says it may be.
func (s *state) firmwareOnly() string {
	if s.env.TPMSealed != nil {
		where, err := s.env.TPMSealed()
		switch {
		case err != nil:
			return fmt.Sprintf("the disk's LUKS2 headers could not be read (%v), and a secret sealed to the TPM unseals only after a firmware boot", err)
		case where != "":
			return fmt.Sprintf("%s holds a LUKS2 volume with a systemd-tpm2 token: a kexec leaves the TPM's PCRs as the previous boot left them, so a secret sealed to the measurements of a firmware boot would not unseal", where)
		}
	}
	if !s.env.SecureBoot || s.staged == nil {
		return ""
	}
	fc := s.staged.Firmware
	switch {
	case fc == nil:
		return "Secure Boot is on and the payload was not checked against db and dbx when it was staged"
	case !fc.Trusted:
		return "it was staged with --allow-untrusted (" + fc.Reason + ")"
	}
	if s.env.Databases == nil {
		return "db and dbx cannot be read to compare them with those the payload was checked against"
	}
	db, dbx, err := s.env.Databases()
	switch {
	case err != nil:
		return fmt.Sprintf("db and dbx cannot be read (%v) to compare them with those the payload was checked against", err)
	case fc.DB != db || fc.DBX != dbx:
		return "db or dbx changed since the payload was checked against them at staging"
	}
	return ""
}

// image is what the payload installs in a slot, and how to check the slot
// holds it after: a unified kernel image when the payload carries one, else
// its kernel and initramfs. why says why the payload cannot be installed.
func (s *state) image(st *meta.Staged) (img boot.Image, check func(*boot.SlotFiles) error, why string) {
	img = boot.Image{Version: s.versionOf(st), Tries: s.env.Tries}
	if a, ok := payload.Find(st.Artifacts, payload.UKI); ok {
		u, err := boot.CheckUKI(io.NewSectionReader(s.env.Stage, a.Offset, a.Size), a.Size)
		if err != nil {
			return img, nil, fmt.Sprintf("%s: %v", payload.UKI, err)
		}
		if _, ok := payload.Find(st.Artifacts, payload.Version); !ok && u.Version() != "" {
			img.Version = u.Version()
		}
		img.UKI = io.NewSectionReader(s.env.Stage, a.Offset, a.Size)
		return img, func(f *boot.SlotFiles) error {
			if f.UKI == nil {
				return fmt.Errorf("slot %s holds no UKI", st.Target)
			}
			return sameSHA(f.UKI, a)
		}, ""
	}
	kernel, ok1 := payload.Find(st.Artifacts, payload.Kernel)
	initrd, ok2 := payload.Find(st.Artifacts, payload.Initramfs)
	if !ok1 || !ok2 {
		return img, nil, "it lacks a kernel or an initramfs, and a UKI"
	}
	img.Kernel = io.NewSectionReader(s.env.Stage, kernel.Offset, kernel.Size)
	img.Initramfs = io.NewSectionReader(s.env.Stage, initrd.Offset, initrd.Size)
	return img, func(f *boot.SlotFiles) error {
		if err := sameSHA(f.Kernel, kernel); err != nil {
			return err
		}
		return sameSHA(f.Initramfs, initrd)
	}, ""
}

// backToActive handles a boot of the slot an apply was writing: the power
// failed after boot-once was set and before META recorded the trial, or the
// slot was picked by hand. META holds it bad, so it does not run: boot-once
// is cleared and the machine reboots through the firmware into the active
// slot, whose prestage applies the payload again.
func (s *state) backToActive(ctx context.Context, target meta.Slot) (Decision, error) {
	reason := fmt.Sprintf("booted slot %s while it was being written (interrupted apply): rebooting into slot %s to apply again", target, s.slots.Active)
	if err := s.commit(meta.PhaseApplying, target, reason); err != nil {
		s.env.Logf("recording it: %v", err)
	}
	if err := s.env.Loader.ClearBootOnce(ctx); err != nil {
		s.env.Logf("clearing boot-once: %v", err)
	}
	return Decision{Action: Reboot, Slot: s.slots.Active, Reason: reason}, nil
}

// trialBoot counts a boot of the trial slot, or rolls a failed trial back.
func (s *state) trialBoot(ctx context.Context, booted meta.Slot) (Decision, error) {
	trial := s.slots.Trial
	ts := s.slots.State(trial)
	if booted != trial {
		spent := s.env.Tries - s.slots.TriesLeft
		if spent == 0 {
			if e, err := s.trialEntry(ctx, trial); err != nil {
				s.env.Logf("reading slot %s's boot counter: %v", trial, err)
			} else if e.Done == 0 {
				return s.neverBooted(ctx, booted)
			} else {
				why := "the firmware did not load it (out of memory, an image it refuses) or it failed early: panic, reset or hang"
				if e.FirmwareRefuses(s.env.SecureBoot) {
					why = "Secure Boot is on and its UKI is not signed: the firmware refuses to start it"
				} else if s.env.SecureBoot && e.UKI {
					why += ", or the firmware refused its signature (Secure Boot is on)"
				}
				return s.rollback(ctx, fmt.Sprintf("slot %s did not confirm: the machine came back to slot %s after %d firmware boot(s) of %s that never reached its prestage (%s)", trial, booted, e.Done, trial, why), Continue)
			}
		}
		// The firmware brought the machine back: the trial slot reset,
		// panicked or hung before it confirmed.
		why := "reset, panic or hang"
		if ts.Reason != "" { // recorded by stager check (RecordChecks)
			why = ts.Reason
		}
		return s.rollback(ctx, fmt.Sprintf("slot %s did not confirm: the machine came back to slot %s after %d boot(s) of %s (%s)", trial, booted, spent, trial, why), Continue)
	}
	if s.slots.TriesLeft <= 0 {
		why := ""
		if ts.Reason != "" {
			why = " (" + ts.Reason + ")"
		}
		return s.rollback(ctx, fmt.Sprintf("slot %s did not confirm within %d boots%s", trial, s.env.Tries, why), Reboot)
	}
	s.slots.TriesLeft--
	n := s.env.Tries - s.slots.TriesLeft
	if err := s.commit(meta.PhaseTrial, trial, fmt.Sprintf("trial boot %d of %d of slot %s (%s): waiting for stager confirm", n, s.env.Tries, trial, ts.Version)); err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}
	return Decision{Action: Continue, Reason: "trial boot of slot " + string(trial)}, nil
}

// MaxRearm bounds how often a trial that was never booted is armed again.
const MaxRearm = 1

// trialEntry is the trial slot's counted entry: its Done is how many times
// the bootloader started it, as its file name counts them (systemd-boot
// renames it at each start; a kexec does not count).
func (s *state) trialEntry(ctx context.Context, slot meta.Slot) (boot.SlotEntry, error) {
	entries, err := s.env.Loader.Slots(ctx)
	if err != nil {
		return boot.SlotEntry{}, err
	}
	for _, e := range entries {
		if e.Slot == slot {
			if !e.Counting {
				return boot.SlotEntry{}, fmt.Errorf("slot %s's entry %s does not count its tries", slot, e.Description)
			}
			return e, nil
		}
	}
	return boot.SlotEntry{}, fmt.Errorf("slot %s: %w", slot, boot.ErrSlotEmpty)
}

// neverBooted handles a trial that META armed and that no boot reached:
// neither its prestage counted a boot nor the bootloader started its entry
// (a cut lost the boot-once variable, or came before the kexec). That is
// no failure of the new version: the trial is armed again, a bounded
// number of times, then given up saying so.
func (s *state) neverBooted(ctx context.Context, booted meta.Slot) (Decision, error) {
	trial := s.slots.Trial
	if s.slots.Rearmed >= MaxRearm {
		return s.rollback(ctx, fmt.Sprintf("slot %s was never booted: armed %d times, the machine came back to slot %s each time before a boot of %s reached its prestage or the bootloader (boot-once lost, kexec not made, or a kernel that dies before prestage after a kexec)", trial, s.slots.Rearmed+1, booted, trial), Continue)
	}
	s.slots.Rearmed++
	reason := fmt.Sprintf("slot %s's trial was armed but never booted (boot-once lost or the kexec not made): trying it again (%d of %d)", trial, s.slots.Rearmed, MaxRearm)
	if err := s.commit(meta.PhaseTrial, trial, reason); err != nil {
		return Decision{Action: Continue, Reason: err.Error()}, err
	}
	if err := s.armFirmwareStart(ctx, trial); err != nil {
		// The kexec is still tried; a firmware reboot then runs this slot
		// again, which gives the trial up.
		s.env.Logf("%v", err)
	}
	return s.tryTrial(trial, reason), nil
}

// rollback marks the trial slot bad with reason, makes sure nothing boots it
// again, and goes on with action.
func (s *state) rollback(ctx context.Context, reason string, action Action) (Decision, error) {
	trial := s.slots.Trial
	ts := s.slots.State(trial)
	ts.State, ts.Reason = "bad", reason
	s.slots.Trial, s.slots.TriesLeft, s.slots.Rearmed = "", 0, 0
	dropped := s.staged
	s.staged = nil
	// Boot-once and a counted default first: left set past the commit,
	// they would start the slot just marked bad at the next firmware
	// boot. Cut after them, the trial is still recorded and the next
	// boot, of the active slot, rolls it back again.
	s.disarm(ctx, s.slots.Active)
	if err := s.commit(meta.PhaseIdle, trial, "rolled back: "+reason); err != nil {
		return Decision{Action: Continue, Reason: reason}, err
	}
	if err := s.env.Loader.SetDefault(ctx, s.slots.Active); err != nil {
		s.env.Logf("setting the default back to slot %s: %v", s.slots.Active, err)
	} else if err := s.loaderSettled(ctx); err != nil {
		s.env.Logf("recording the bootloader's default in META: %v", err)
	}
	return Decision{Action: action, Slot: s.slots.Active, Reason: reason, Dropped: dropped}, nil
}

// cmdlineFor is the new slot's command line: the image's own, else the
// running slot's without stagehand.slot (the backend adds it).
func (s *state) cmdlineFor(ctx context.Context, st *meta.Staged) string {
	if a, ok := payload.Find(st.Artifacts, payload.Cmdline); ok && a.Size > 0 && a.Size < 4096 {
		b := make([]byte, a.Size)
		if _, err := s.env.Stage.ReadAt(b, a.Offset); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	entries, err := s.env.Loader.Slots(ctx)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if e.Slot == s.slots.Active {
			var keep []string
			for _, p := range cmdline.Parse(e.Cmdline) {
				if p.Key != boot.SlotParam {
					keep = append(keep, p.String())
				}
			}
			return strings.Join(keep, " ")
		}
	}
	return ""
}

// versionOf is the staged image's version file, else its short digest.
func (s *state) versionOf(st *meta.Staged) string {
	if a, ok := payload.Find(st.Artifacts, payload.Version); ok && a.Size > 0 && a.Size < 256 {
		b := make([]byte, a.Size)
		if _, err := s.env.Stage.ReadAt(b, a.Offset); err == nil {
			if v := strings.TrimSpace(string(b)); v != "" && !strings.ContainsAny(v, "\r\n") {
				return v
			}
		}
	}
	return short(st.Digest)
}

func short(digest string) string {
	d := strings.TrimPrefix(digest, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

// sameSHA reads r to its end and checks it is artifact a, byte for byte.
func sameSHA(r io.Reader, a meta.Artifact) error {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("reading %s back: %w", a.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 || n != a.Size {
		return fmt.Errorf("%s in the slot is %d bytes with sha256 %s, the payload's is %d bytes with %s", a.Name, n, short(got), a.Size, short(a.SHA256))
	}
	return nil
}
