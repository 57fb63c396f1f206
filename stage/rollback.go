package stage

import (
	"cmp"
	"errors"
	"fmt"
	"strings"

	"github.com/stagehand-dev/stagehand/meta"
)

// ErrRolledBack marks an image whose digest this machine tried and rolled
// back: Stage does not stage it again unless Options.Retry is set, so that
// an update that fails here is not tried in a loop.
var ErrRolledBack = errors.New("rolled back on this machine")

// RolledBackError is ErrRolledBack with META's record of the slot that
// gave the image up.
type RolledBackError struct {
	Slot  meta.Slot
	State meta.SlotState // "bad", with the image's digest, its version and why
}

func (e *RolledBackError) Error() string {
	v := ""
	if d := strings.TrimPrefix(e.State.Digest, "sha256:"); e.State.Version != "" && !strings.HasPrefix(d, e.State.Version) {
		v = " (" + e.State.Version + ")" // not when it is the short digest apply falls back to
	}
	why := cmp.Or(e.State.Reason, fmt.Sprintf("slot %s was given up (no reason recorded)", e.Slot))
	return fmt.Sprintf("image %s%s rolled back on this machine: %s; stage it again with --retry", e.State.Digest, v, why)
}

func (e *RolledBackError) Unwrap() error { return ErrRolledBack }

// rolledBack returns the record of the slot that tried digest and gave it
// up, or nil. Only the slot states can say: the transition ring's
// "rolled back: …" entries do not name the digest, and the ring forgets.
//
// A slot is bad for two reasons. apply marks the slot it writes bad, with
// Reason "being written" (or, later, why the write failed), and records
// the version only once the slot is written and the trial armed; a trial
// given up (no confirm, never booted, stager rollback) keeps that version
// and says why. Only the second is a rollback: an interrupted or failed
// write, left bad after the payload was refused or cancelled, ran nothing.
// A refused payload marks no slot at all.
func rolledBack(slots *meta.Slots, digest string) *RolledBackError {
	for _, sl := range []meta.Slot{meta.SlotA, meta.SlotB} {
		ss := *slots.State(sl)
		if ss.State == "bad" && ss.Digest == digest && ss.Version != "" && ss.Reason != "being written" {
			return &RolledBackError{Slot: sl, State: ss}
		}
	}
	return nil
}
