package apply

import (
	"context"
	"fmt"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

// A trial reached by kexec proves that the new kernel and OS run, not that
// the firmware and the bootloader can start them: a UKI signed by a key
// that db lacks, an initramfs too large for the firmware, a loader entry
// it cannot read all pass a kexec. So a slot confirmed in a boot reached by
// kexec is confirmed in META (the node is upgraded) but "firmware start
// pending" (meta.Slots.Pending): its entry keeps its boot counter, the
// previous slot stays the bootloader's default, and the boot-once set when
// the trial was armed makes the next firmware boot start it. That boot
// completes the blessing; a firmware boot that comes back to the previous
// slot instead rolls it back.

// kexeced tells whether this boot of booted was reached by kexec: the
// bootloader says it started another entry (a kexec'd kernel inherits the
// variables of the firmware boot before it). Unknown counts as started by
// the firmware, as before this rule.
func (s *state) kexeced(ctx context.Context, booted meta.Slot) bool {
	sel, known := s.bootedEntry(ctx)
	return known && sel != booted
}

// confirmPending confirms the trial slot booted in META, firmware start
// pending, and leaves the bootloader as the trial armed it (counted entry,
// boot-once, previous default). Where boot-once cannot be set (firmware
// without runtime variable writes), the firmware could not be made to try
// the slot first: it is blessed at once, as before this rule.
func (s *state) confirmPending(ctx context.Context, booted, prev meta.Slot, confirmed *meta.Staged) (*Result, error) {
	ts := s.slots.State(booted)
	done := 0
	if e, err := s.trialEntry(ctx, booted); err == nil {
		done = e.Done
	}
	if err := s.armFirmwareStart(ctx, booted); err != nil {
		s.env.Logf("%v; blessing slot %s now", err, booted)
		if err := s.commit(meta.PhaseIdle, booted, fmt.Sprintf("confirmed slot %s (%s) after a kexec; the firmware cannot take boot-once (%v), so it is blessed now; slot %s is the previous", booted, ts.Version, err, prev)); err != nil {
			return nil, err
		}
		if err := s.finishDefault(ctx, booted); err != nil {
			return nil, err
		}
		return &Result{Slot: booted, Changed: true, Staged: confirmed, Message: fmt.Sprintf("confirmed slot %s (%s): it is the default now (the firmware cannot boot it once first); slot %s is kept for rollback", booted, ts.Version, prev)}, nil
	}
	s.slots.Pending, s.slots.PendingDone = booted, done
	counted := s.countedDefault(ctx)
	until := fmt.Sprintf("slot %s stays the bootloader's default until the firmware starts slot %s", prev, booted)
	if counted {
		until = fmt.Sprintf("slot %s's counted entry is the bootloader's default, slot %s its fallback, until the firmware starts slot %s", booted, prev, booted)
	}
	if err := s.commit(meta.PhaseIdle, booted, fmt.Sprintf("confirmed slot %s (%s) after a kexec, firmware start pending: %s", booted, ts.Version, until)); err != nil {
		return nil, err
	}
	if err := s.ensureFallback(ctx); err != nil {
		s.env.Logf("%v", err)
	}
	how := fmt.Sprintf("the next reboot goes through the firmware into slot %s once, which completes its blessing; slot %s stays the default until then", booted, prev)
	if counted {
		how = fmt.Sprintf("the next reboot goes through the firmware into slot %s by the bootloader's default, its counted entry, which completes its blessing; slot %s is the fallback until then", booted, prev)
	}
	return &Result{Slot: booted, Changed: true, Staged: confirmed, Message: fmt.Sprintf("confirmed slot %s (%s), firmware start pending: %s", booted, ts.Version, how)}, nil
}

// armFirmwareStart makes the next firmware boot start slot: by boot-once,
// or, on firmware that takes no variable writes at run time, by making
// the slot's counted entry the default (boot.CountedDefault), which the
// bootloader gives up by itself once it has counted its tries. The error
// of a firmware refusing the writes satisfies efivar.ReadOnly.
func (s *state) armFirmwareStart(ctx context.Context, slot meta.Slot) error {
	err := s.env.Loader.SetBootOnce(ctx, slot)
	if err == nil || !efivar.ReadOnly(err) {
		return err
	}
	cd, ok := s.env.Loader.(boot.CountedDefault)
	if !ok {
		return fmt.Errorf("setting boot-once for slot %s: %w", slot, err)
	}
	if cerr := cd.SetCountedDefault(ctx, slot); cerr != nil {
		return fmt.Errorf("setting boot-once for slot %s: %w; nor can its counted entry be the default: %v", slot, err, cerr)
	}
	s.env.Logf("the firmware takes no boot-once (%v): slot %s's counted entry is the bootloader's default, which counts its firmware starts and gives it up by itself", err, slot)
	return nil
}

// countedDefault tells whether a trial or pending slot is armed by the
// counted default (armFirmwareStart).
func (s *state) countedDefault(ctx context.Context) bool {
	cd, ok := s.env.Loader.(boot.CountedDefault)
	if !ok {
		return false
	}
	on, err := cd.CountedDefault(ctx)
	if err != nil {
		s.env.Logf("reading the bootloader's default: %v", err)
	}
	return on
}

// disarm undoes what armFirmwareStart did, before a commit that gives the
// armed slot up: boot-once cleared, the counted default replaced by def.
func (s *state) disarm(ctx context.Context, def meta.Slot) {
	if err := s.env.Loader.ClearBootOnce(ctx); err != nil {
		s.env.Logf("clearing boot-once: %v", err)
	}
	if s.countedDefault(ctx) {
		if err := s.env.Loader.SetDefault(ctx, def); err != nil {
			s.env.Logf("setting the default back to slot %s: %v", def, err)
		}
	}
}

// ensureFallback makes sure the firmware comes back to the bootloader, not
// to its shell or setup, when the bootloader fails the pending slot's
// entry and returns (boot.FirmwareFallback).
func (s *state) ensureFallback(ctx context.Context) error {
	if ff, ok := s.env.Loader.(boot.FirmwareFallback); ok {
		return ff.EnsureFirmwareFallback(ctx)
	}
	return nil
}

// completePending ends the pending state of the slot this boot runs,
// which the firmware started: the slot becomes permanent in the
// bootloader (blessed, the default, no boot-once).
func (s *state) completePending(ctx context.Context) error {
	p := s.slots.Pending
	s.slots.Pending, s.slots.PendingDone = "", 0
	if err := s.commit(s.slots.Phase, p, fmt.Sprintf("slot %s was started by the firmware: its blessing is complete (it was confirmed after a kexec)", p)); err != nil {
		return err
	}
	return s.finishDefault(ctx, p)
}

// pendingBoot handles a boot while a slot is firmware start pending: the
// firmware started the pending slot (its blessing is completed), or came
// back to the previous slot (the pending slot is rolled back, saying why,
// or, when the firmware never tried it, tried once more). stop says the
// decision is final; otherwise the flow goes on.
func (s *state) pendingBoot(ctx context.Context, booted meta.Slot) (d Decision, stop bool, err error) {
	p, prev := s.slots.Pending, s.slots.Previous
	switch {
	case booted == p && !s.kexeced(ctx, booted):
		if err := s.completePending(ctx); err != nil {
			return Decision{Action: Continue, Reason: err.Error()}, true, err
		}
		return Decision{}, false, nil
	case booted != prev:
		return Decision{}, false, nil
	}
	e, eerr := s.trialEntry(ctx, p)
	if eerr == nil && e.Done <= s.slots.PendingDone && s.slots.Rearmed < MaxRearm {
		// The firmware never tried it: boot-once lost (a cut, a reset
		// of the variables). Once more, through the firmware.
		s.slots.Rearmed++
		reason := fmt.Sprintf("slot %s is confirmed, firmware start pending, but this firmware boot started slot %s without trying it (boot-once lost): trying slot %s through the firmware again (%d of %d)", p, booted, p, s.slots.Rearmed, MaxRearm)
		if err := s.commit(s.slots.Phase, p, reason); err != nil {
			return Decision{Action: Continue, Reason: err.Error()}, true, err
		}
		if err := s.armFirmwareStart(ctx, p); err != nil {
			s.env.Logf("%v", err)
			return Decision{Action: Continue, Reason: reason}, true, nil
		}
		return Decision{Action: Reboot, Slot: p, Reason: reason}, true, nil
	}
	why := fmt.Sprintf("the machine came back to slot %s", booted)
	switch {
	case eerr != nil:
		why += fmt.Sprintf("; slot %s's entry: %v", p, eerr)
	case e.Done > s.slots.PendingDone:
		why += fmt.Sprintf(" after %d firmware start(s) of slot %s's entry (%s): the firmware refused its kernel or initramfs, or it failed before its prestage", e.Done-s.slots.PendingDone, p, e.Description)
		if s.env.SecureBoot {
			why += "; Secure Boot is on"
		}
	default:
		why += fmt.Sprintf(" and the firmware never started slot %s, armed %d times", p, s.slots.Rearmed+1)
	}
	reason := fmt.Sprintf("slot %s was confirmed after a kexec, but the firmware could not start it at the first cold boot (%s); slot %s is bad, slot %s active", p, why, p, prev)
	ps := s.slots.State(p)
	ps.State, ps.Reason = "bad", reason
	s.slots.Active, s.slots.Previous = prev, p
	s.slots.Pending, s.slots.PendingDone, s.slots.Rearmed = "", 0, 0
	s.disarm(ctx, prev)
	if err := s.commit(s.slots.Phase, p, "rolled back: "+reason); err != nil {
		return Decision{Action: Continue, Reason: reason}, true, err
	}
	return Decision{}, false, nil
}
