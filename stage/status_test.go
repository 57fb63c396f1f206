package stage

import (
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/meta"
)

// TestOffActive: a system booted from a slot META holds neither active nor
// on trial is told so; any other boot is not.
func TestOffActive(t *testing.T) {
	good := meta.SlotState{State: "good", Version: "v2"}
	for _, tc := range []struct {
		name   string
		booted meta.Slot
		slots  meta.Slots
		want   string // a part of the message; "" for none
	}{
		{"active", meta.SlotB, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, B: good}, ""},
		{"unknown", "", meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, B: good}, ""},
		{"on trial", meta.SlotB, meta.Slots{Phase: meta.PhaseTrial, Active: meta.SlotA, Trial: meta.SlotB}, ""},
		{"the other, idle", meta.SlotA, meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, B: good}, "this system booted slot a, but META's active slot is b (v2, good)"},
		{"the active, during another's trial", meta.SlotB, meta.Slots{Phase: meta.PhaseTrial, Active: meta.SlotA, Trial: meta.SlotA}, "booted slot b, but META's active slot is a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := offActive(tc.booted, &tc.slots)
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("offActive = %q, want %q", got, tc.want)
			}
		})
	}
}
