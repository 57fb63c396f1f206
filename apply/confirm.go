package apply

import (
	"context"
	"errors"
	"fmt"

	"github.com/stagehand-dev/stagehand/meta"
)

// ErrRefused marks a confirm or rollback that the state does not allow.
var ErrRefused = errors.New("refused")

// Result says what Confirm or Rollback did.
type Result struct {
	Slot    meta.Slot // the slot now active
	Changed bool      // false when it already was
	Message string
	Staged  *meta.Staged // the payload confirmed or given up, whose bytes in STAGE may now be cleared
}

// Confirm marks the running slot good and makes it the default: META first
// (the trial ends, the slot is active, the other becomes previous), then the
// bootloader (bless the entry, set the default, drop boot-once). A cut
// between the two is finished by the next boot's reconcileDefault. It is
// idempotent.
func Confirm(ctx context.Context, env *Env) (*Result, error) {
	env.defaults()
	s, err := load(env)
	if err != nil {
		return nil, err
	}
	booted := s.running(ctx)
	switch {
	case booted == "":
		return nil, fmt.Errorf("%w: the running kernel was not booted from a stagehand slot (no stagehand.slot= on its command line, and the bootloader names no stagehand entry)", ErrRefused)
	case s.slots.Phase == meta.PhaseTrial && booted == s.slots.Trial:
		ts := s.slots.State(booted)
		ts.State, ts.Reason = "good", ""
		prev := s.slots.Active
		s.slots.Previous, s.slots.Active = prev, booted
		s.slots.Trial, s.slots.TriesLeft, s.slots.Rearmed = "", 0, 0
		confirmed := s.staged
		s.staged = nil
		if s.kexeced(ctx, booted) {
			return s.confirmPending(ctx, booted, prev, confirmed)
		}
		if err := s.commit(meta.PhaseIdle, booted, fmt.Sprintf("confirmed slot %s (%s); slot %s is the previous", booted, ts.Version, prev)); err != nil {
			return nil, err
		}
		if err := s.finishDefault(ctx, booted); err != nil {
			return nil, err
		}
		return &Result{Slot: booted, Changed: true, Staged: confirmed, Message: fmt.Sprintf("confirmed slot %s (%s): it is the default now; slot %s is kept for rollback", booted, ts.Version, prev)}, nil
	case booted == s.slots.Pending:
		if s.kexeced(ctx, booted) {
			return &Result{Slot: booted, Message: fmt.Sprintf("slot %s is confirmed, firmware start pending: slot %s stays the bootloader's default until the firmware starts slot %s (at the next reboot)", booted, s.slots.Previous, booted)}, nil
		}
		if err := s.completePending(ctx); err != nil {
			return nil, err
		}
		return &Result{Slot: booted, Changed: true, Message: fmt.Sprintf("slot %s was started by the firmware: its blessing is complete, it is the default now", booted)}, nil
	case s.slots.Phase == meta.PhaseTrial:
		return nil, fmt.Errorf("%w: slot %s is on trial but this system booted from slot %s; the trial is rolled back at the next boot", ErrRefused, s.slots.Trial, booted)
	case booted == s.slots.Active && s.slots.State(booted).State == "good":
		// Already confirmed: make sure the bootloader agrees.
		if err := s.finishDefault(ctx, booted); err != nil {
			return nil, err
		}
		return &Result{Slot: booted, Message: fmt.Sprintf("slot %s is already confirmed and the default", booted)}, nil
	case booted != s.slots.Active:
		return nil, fmt.Errorf("%w: this system booted from slot %s, which is not on trial; the default is slot %s (use stager rollback to switch)", ErrRefused, booted, s.slots.Active)
	}
	return nil, fmt.Errorf("%w: slot %s is %q, not on trial", ErrRefused, booted, s.slots.State(booted).State)
}

// finishDefault brings the bootloader in line with a confirmed slot, then
// records in META that it is.
func (s *state) finishDefault(ctx context.Context, slot meta.Slot) error {
	if err := s.env.Loader.Bless(ctx, slot); err != nil {
		return fmt.Errorf("blessing slot %s: %w", slot, err)
	}
	if err := s.env.Loader.SetDefault(ctx, slot); err != nil {
		return fmt.Errorf("making slot %s the default: %w", slot, err)
	}
	if err := s.env.Loader.ClearBootOnce(ctx); err != nil {
		return fmt.Errorf("clearing boot-once: %w", err)
	}
	if err := s.loaderSettled(ctx); err != nil {
		return fmt.Errorf("recording the default in META: %w", err)
	}
	return nil
}

// Rollback makes the other slot the default, when it holds a good image.
// Run from a trial slot, it gives the trial up: the trial slot is marked bad
// and the active slot stays. META first, then the bootloader.
func Rollback(ctx context.Context, env *Env) (*Result, error) {
	env.defaults()
	s, err := load(env)
	if err != nil {
		return nil, err
	}
	if s.slots.Phase == meta.PhaseTrial {
		trial := s.slots.Trial
		d, err := s.rollback(ctx, fmt.Sprintf("slot %s given up by stager rollback", trial), Continue)
		if err != nil {
			return nil, err
		}
		return &Result{Slot: s.slots.Active, Changed: true, Staged: d.Dropped, Message: fmt.Sprintf("gave up the trial of slot %s; slot %s stays the default", trial, s.slots.Active)}, nil
	}
	if s.slots.Phase != meta.PhaseIdle {
		return nil, fmt.Errorf("%w: an upgrade is %s; cancel it (stager cancel) first", ErrRefused, s.slots.Phase)
	}
	from, to := s.slots.Active, s.slots.Active.Other()
	if st := s.slots.State(to); st.State != "good" {
		why := st.State
		if why == "" {
			why = "empty"
		}
		if st.Reason != "" {
			why += ": " + st.Reason
		}
		return nil, fmt.Errorf("%w: slot %s does not hold a good image (%s)", ErrRefused, to, why)
	}
	s.slots.Previous, s.slots.Active = from, to
	s.slots.Pending, s.slots.PendingDone = "", 0 // the slot left is no longer the one to bless
	if err := s.commit(meta.PhaseIdle, to, fmt.Sprintf("rolled back by stager rollback from slot %s to slot %s (%s)", from, to, s.slots.State(to).Version)); err != nil {
		return nil, err
	}
	if err := s.finishDefault(ctx, to); err != nil {
		return nil, err
	}
	return &Result{Slot: to, Changed: true, Message: fmt.Sprintf("slot %s (%s) is the default now; it boots at the next reboot", to, s.slots.State(to).Version)}, nil
}
