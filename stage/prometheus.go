package stage

import (
	"fmt"
	"io"
	"strings"

	"github.com/stagehand-dev/stagehand/meta"
)

// WritePrometheus writes st as node-exporter textfile metrics (Prometheus
// text format 0.0.4): what runs, the phase, the slots' states, the
// rollbacks META's transition ring holds, the last transition's time, and
// what the staging of a staged image fetched and reused.
func (st *Status) WritePrometheus(w io.Writer) error {
	sl := st.Slots
	booted, run := st.Running()
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("stagehand_info", "gauge", "The running slot, its version and digest, and META's active slot.")
	fmt.Fprintf(&b, "stagehand_info{slot=\"%s\",version=\"%s\",digest=\"%s\",active=\"%s\"} 1\n", booted, lv(run.Version), lv(run.Digest), sl.Active)
	metric("stagehand_phase", "gauge", "The upgrade phase META records: 1 for the current one.")
	for _, p := range []meta.Phase{meta.PhaseIdle, meta.PhaseStaged, meta.PhaseApplying, meta.PhaseTrial} {
		fmt.Fprintf(&b, "stagehand_phase{phase=\"%s\"} %d\n", p, bool01(sl.Phase == p))
	}
	metric("stagehand_slot_good", "gauge", "1 when the slot holds a good (confirmed) image.")
	for _, s := range []struct {
		slot meta.Slot
		st   meta.SlotState
	}{{meta.SlotA, sl.A}, {meta.SlotB, sl.B}} {
		fmt.Fprintf(&b, "stagehand_slot_good{slot=\"%s\",version=\"%s\",state=\"%s\"} %d\n", s.slot, lv(s.st.Version), lv(s.st.State), bool01(s.st.State == "good"))
	}
	var rollbacks int
	for _, t := range st.Transitions {
		if strings.HasPrefix(t.Reason, "rolled back") {
			rollbacks++
		}
	}
	metric("stagehand_rollbacks", "gauge", "Rollbacks among the transitions META keeps (its ring is bounded).")
	fmt.Fprintf(&b, "stagehand_rollbacks %d\n", rollbacks)
	metric("stagehand_firmware_start_pending", "gauge", "1 while the active slot is confirmed after a kexec but not yet started by the firmware (its blessing completes at the next firmware boot).")
	fmt.Fprintf(&b, "stagehand_firmware_start_pending{slot=\"%s\"} %d\n", sl.Pending, bool01(sl.Pending != ""))
	metric("stagehand_off_active", "gauge", "1 when the running slot is neither META's active slot nor its trial.")
	fmt.Fprintf(&b, "stagehand_off_active %d\n", bool01(st.OffActive != ""))
	if sg := st.Staged; sg != nil && sg.Transfer != nil {
		metric("stagehand_staged_fetched_bytes", "gauge", "Bytes the staging of the staged image read from its source (registry, layout, archive).")
		fmt.Fprintf(&b, "stagehand_staged_fetched_bytes{digest=\"%s\"} %d\n", lv(sg.Digest), sg.Transfer.Fetched)
		metric("stagehand_staged_reused_bytes", "gauge", "Bytes the staging of the staged image copied from this machine's slots and STAGE (delta staging).")
		fmt.Fprintf(&b, "stagehand_staged_reused_bytes{digest=\"%s\"} %d\n", lv(sg.Digest), sg.Transfer.Reused)
	}
	if n := len(st.Transitions); n > 0 {
		t := st.Transitions[n-1]
		metric("stagehand_last_transition_timestamp_seconds", "gauge", "Time of META's last transition.")
		fmt.Fprintf(&b, "stagehand_last_transition_timestamp_seconds{from=\"%s\",to=\"%s\"} %d\n", t.From, t.To, t.Time.Unix())
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func bool01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// lv escapes a label value as the text format wants.
var lv = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace
