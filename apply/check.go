package apply

import (
	"context"
	"fmt"

	"github.com/stagehand-dev/stagehand/meta"
)

// CheckOutcome says what RecordChecks found and did.
type CheckOutcome struct {
	Trial     bool // the running slot is on trial
	TriesLeft int  // boots the trial has left after this one
	Recorded  bool // the verdict was written to META
}

// RecordChecks records the verdict of the health checks (stager check) on
// the running slot while it is on trial: a transition trial → trial with
// summary, and, when a required check failed, the slot's reason, which the
// rollback that follows names. Outside a trial it writes nothing: a boot
// of a confirmed slot changes no META.
func RecordChecks(ctx context.Context, env *Env, healthy bool, summary string) (*CheckOutcome, error) {
	env.defaults()
	s, err := load(env)
	if err != nil {
		return nil, err
	}
	booted := s.running(ctx)
	if s.slots.Phase != meta.PhaseTrial || booted == "" || booted != s.slots.Trial {
		return &CheckOutcome{}, nil
	}
	ts := s.slots.State(booted)
	out := &CheckOutcome{Trial: true, TriesLeft: s.slots.TriesLeft}
	reason := fmt.Sprintf("health checks of slot %s (%s) passed: %s", booted, ts.Version, summary)
	if !healthy {
		ts.Reason = "health check failed: " + summary
		reason = fmt.Sprintf("health checks of slot %s (%s) failed, no confirm: %s", booted, ts.Version, summary)
	}
	if err := s.commit(meta.PhaseTrial, booted, reason); err != nil {
		return nil, fmt.Errorf("recording the health checks: %w", err)
	}
	out.Recorded = true
	return out, nil
}
