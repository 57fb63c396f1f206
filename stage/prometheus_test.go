package stage

import (
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/meta"
)

func TestWritePrometheus(t *testing.T) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		st   Status
		want []string // lines that must be there
	}{
		{"rolled back", Status{
			Booted: meta.SlotA,
			Slots: &meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotA,
				A: meta.SlotState{State: "good", Version: "v1", Digest: "sha256:aa"},
				B: meta.SlotState{State: "bad", Version: `v"3`, Digest: "sha256:bb", Reason: "panic"}},
			Transitions: []meta.Transition{
				{Time: at.Add(-time.Hour), From: meta.PhaseApplying, To: meta.PhaseTrial, Slot: meta.SlotB, Reason: "slot b written"},
				{Time: at, From: meta.PhaseTrial, To: meta.PhaseIdle, Slot: meta.SlotB, Reason: "rolled back: slot b (v3) used up its 2 boots"},
			},
		}, []string{
			`stagehand_info{slot="a",version="v1",digest="sha256:aa",active="a"} 1`,
			`stagehand_phase{phase="idle"} 1`,
			`stagehand_phase{phase="trial"} 0`,
			`stagehand_slot_good{slot="b",version="v\"3",state="bad"} 0`,
			`stagehand_rollbacks 1`,
			`stagehand_off_active 0`,
			`stagehand_firmware_start_pending{slot=""} 0`,
			`stagehand_last_transition_timestamp_seconds{from="trial",to="idle"} 1796292000`,
		}},
		{"firmware start pending", Status{
			Booted: meta.SlotB,
			Slots: &meta.Slots{Phase: meta.PhaseIdle, Active: meta.SlotB, Previous: meta.SlotA, Pending: meta.SlotB,
				A: meta.SlotState{State: "good", Version: "v1"}, B: meta.SlotState{State: "good", Version: "v2"}},
			Transitions: []meta.Transition{},
		}, []string{
			`stagehand_info{slot="b",version="v2",digest="",active="b"} 1`,
			`stagehand_firmware_start_pending{slot="b"} 1`,
		}},
		{"staged by a delta", Status{
			Booted: meta.SlotA,
			Slots:  &meta.Slots{Phase: meta.PhaseStaged, Active: meta.SlotA, A: meta.SlotState{State: "good", Version: "v1"}},
			Staged: &meta.Staged{Digest: "sha256:cc", Target: meta.SlotB, Transfer: &meta.Transfer{Fetched: 720000, Reused: 3500000}},
		}, []string{
			`stagehand_phase{phase="staged"} 1`,
			`stagehand_staged_fetched_bytes{digest="sha256:cc"} 720000`,
			`stagehand_staged_reused_bytes{digest="sha256:cc"} 3500000`,
		}},
		{"on trial, booted unknown", Status{
			Slots: &meta.Slots{Phase: meta.PhaseTrial, Active: meta.SlotA, Trial: meta.SlotB,
				A: meta.SlotState{State: "good", Version: "v1"}, B: meta.SlotState{State: "trial", Version: "v2"}},
			Transitions: []meta.Transition{},
		}, []string{
			`stagehand_info{slot="a",version="v1",digest="",active="a"} 1`,
			`stagehand_phase{phase="trial"} 1`,
			`stagehand_rollbacks 0`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := tc.st.WritePrometheus(&b); err != nil {
				t.Fatal(err)
			}
			got := b.String()
			lines := map[string]bool{}
			for _, l := range strings.Split(got, "\n") {
				lines[l] = true
			}
			for _, w := range tc.want {
				if !lines[w] {
					t.Errorf("missing %s in\n%s", w, got)
				}
			}
			// Every sample line belongs to a metric declared by # TYPE before it.
			typed := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
				if f := strings.Fields(l); len(f) == 4 && f[1] == "TYPE" {
					typed[f[2]] = true
				} else if !strings.HasPrefix(l, "#") {
					name, _, _ := strings.Cut(l, "{")
					name, _, _ = strings.Cut(name, " ")
					if !typed[name] {
						t.Errorf("sample %q before its TYPE", l)
					}
				}
			}
		})
	}
}
