package meta

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRecordsRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 25, 1, 2, 3, 0, time.UTC)
	b := &Block{}
	st := &Staged{Image: "127.0.0.1:5000/os:v2", Digest: "sha256:abcd", SignedBy: "d274d18b", Target: SlotB, Time: now,
		Artifacts: []Artifact{{Name: "vmlinuz", Offset: 4096, Size: 100, SHA256: "00"}}}
	if err := b.SetStaged(st); err != nil {
		t.Fatal(err)
	}
	got, ok, err := b.Staged()
	if !ok || err != nil {
		t.Fatalf("Staged() = %v, %v", ok, err)
	}
	if diff := cmp.Diff(st, got); diff != "" {
		t.Errorf("staged (-want, +got):\n%s", diff)
	}
	sl, err := b.Slots()
	if err != nil || sl.Phase != PhaseIdle || sl.Active != SlotA {
		t.Fatalf("default slots = %+v, %v", sl, err)
	}
	sl.Phase, sl.Trial, sl.TriesLeft = PhaseTrial, SlotB, 2
	sl.B = SlotState{State: "trial", Version: "v2"}
	if err := b.SetSlots(sl); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Slots(); !cmp.Equal(sl, got) {
		t.Errorf("slots: %s", cmp.Diff(sl, got))
	}
}

func TestRecordsRejectInvalid(t *testing.T) {
	for _, tc := range []struct {
		tag  Tag
		json string
	}{
		{TagStaged, `{"target":"c"}`},
		{TagStaged, `{"target":"a","artifacts":[{"offset":-1}]}`},
		{TagStaged, `not json`},
		{TagSlots, `{"phase":"dancing","active":"a"}`},
		{TagSlots, `{"phase":"idle","active":"z"}`},
		{TagSlots, `{"phase":"trial","active":"a","tries_left":-1}`},
		{TagTransitions, `{}`},
	} {
		b := &Block{}
		b.Set(tc.tag, []byte(tc.json))
		var err error
		switch tc.tag {
		case TagStaged:
			_, _, err = b.Staged()
		case TagSlots:
			_, err = b.Slots()
		case TagTransitions:
			_, err = b.Transitions()
		}
		if err == nil || !strings.Contains(err.Error(), TagName(tc.tag)) {
			t.Errorf("tag %#x %s: err = %v, want an error naming the record", tc.tag, tc.json, err)
		}
	}
	if err := (&Block{}).SetStaged(&Staged{Target: "x"}); err == nil {
		t.Error("SetStaged accepted an invalid target")
	}
}

func TestTransitionRing(t *testing.T) {
	b := &Block{}
	for i := range MaxTransitions + 5 {
		if err := b.AddTransition(Transition{From: PhaseIdle, To: PhaseStaged, Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	ts, err := b.Transitions()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != MaxTransitions || ts[0].Reason != "5" || ts[len(ts)-1].Reason != fmt.Sprint(MaxTransitions+4) {
		t.Errorf("ring holds %d, first %q, last %q", len(ts), ts[0].Reason, ts[len(ts)-1].Reason)
	}
	// A damaged ring does not block new transitions.
	b.Set(TagTransitions, []byte("garbage"))
	if err := b.AddTransition(Transition{Reason: "after damage"}); err != nil {
		t.Fatal(err)
	}
	if ts, _ := b.Transitions(); len(ts) != 1 {
		t.Errorf("ring after damage holds %d", len(ts))
	}
}

func TestTagNames(t *testing.T) {
	for tag, name := range tagNames {
		if got, ok := TagByName(name); !ok || got != tag {
			t.Errorf("TagByName(%q) = %#x, %v", name, got, ok)
		}
	}
	if TagName(0x99) != "" {
		t.Error("unknown tag has a name")
	}
}

func TestSlotsState(t *testing.T) {
	s := Slots{A: SlotState{Version: "v1"}, B: SlotState{Version: "v2"}}
	if s.State(SlotA).Version != "v1" || s.State(SlotB).Version != "v2" {
		t.Fatalf("State: %+v %+v", s.State(SlotA), s.State(SlotB))
	}
	s.State(SlotB).State = "bad" // a pointer into s
	if s.B.State != "bad" {
		t.Fatal("State is not a pointer into Slots")
	}
}
