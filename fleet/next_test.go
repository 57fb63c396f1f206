package fleet

import (
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// TestNext: what META says of the target, from the running slot.
func TestNext(t *testing.T) {
	const target, old = "sha256:t", "sha256:o"
	good := func(d string) meta.SlotState { return meta.SlotState{State: "good", Digest: d} }
	for _, tc := range []struct {
		name   string
		booted meta.Slot
		slots  meta.Slots
		staged *meta.Staged
		want   step
	}{
		{"nothing of it", meta.SlotA, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA, A: good(old)}, nil, stepUpgrade},
		{"another image staged", meta.SlotA, meta.Slots{Phase: meta.PhaseStaged, Active: meta.SlotA, A: good(old)}, &meta.Staged{Digest: "sha256:x"}, stepUpgrade},
		{"staged, not rebooted", meta.SlotA, meta.Slots{Phase: meta.PhaseStaged, Active: meta.SlotA, A: good(old)}, &meta.Staged{Digest: target}, stepReboot},
		{"applying", meta.SlotA, meta.Slots{Phase: meta.PhaseApplying, Active: meta.SlotA, A: good(old), B: meta.SlotState{State: "bad", Digest: target, Reason: "being written"}}, nil, stepApplying},
		{"on trial, running it", meta.SlotB, meta.Slots{Phase: meta.PhaseTrial, Active: meta.SlotA, Trial: meta.SlotB, A: good(old), B: meta.SlotState{State: "trial", Digest: target}}, nil, stepTrial},
		{"on trial, running the old slot", meta.SlotA, meta.Slots{Phase: meta.PhaseTrial, Active: meta.SlotA, Trial: meta.SlotB, A: good(old), B: meta.SlotState{State: "trial", Digest: target}}, nil, stepApplying},
		{"confirmed", meta.SlotB, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, A: good(old), B: good(target)}, nil, stepDone},
		{"confirmed, kernel did not say", "", meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, A: good(old), B: good(target)}, nil, stepDone},
		{"confirmed, old slot picked by hand", meta.SlotA, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, A: good(old), B: good(target)}, nil, stepOffActive},
		{"old slot picked by hand, nothing of it", meta.SlotB, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA, A: good(old), B: good("sha256:p")}, nil, stepOffActive},
		{"rolled back", meta.SlotA, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA, A: good(old), B: meta.SlotState{State: "bad", Digest: target, Reason: "did not confirm"}}, nil, stepRolledBack},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &stage.Status{Slots: &tc.slots, Staged: tc.staged}
			st.SetBooted(tc.booted)
			if got, _ := next(st, target); got != tc.want {
				t.Fatalf("next = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"v2":                    "v2",
		"1.10.3+talos":          "1.10.3_talos",
		"-v2-":                  "v2",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
		"":                      "",
	} {
		if got := labelValue(in); got != want {
			t.Errorf("labelValue(%q) = %q, want %q", in, got, want)
		}
	}
}
