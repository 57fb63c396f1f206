package stage

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// Status is the upgrade state as META records it.
type Status struct {
	Disk        string            `json:"disk"`
	Booted      meta.Slot         `json:"booted,omitempty"` // from stagehand.slot= on the running kernel's command line
	Generation  uint64            `json:"generation"`
	Damaged     string            `json:"damaged,omitempty"` // corrupt META copy, repaired by the next write
	Slots       *meta.Slots       `json:"slots"`
	Staged      *meta.Staged      `json:"staged,omitempty"`
	Transitions []meta.Transition `json:"transitions"`
	// OffActive, when set, says that the running system booted a slot
	// META holds neither active nor on trial: what runs is not what META
	// records (a slot picked by hand in the boot menu, or a repair that
	// could not be made at early boot).
	OffActive string `json:"off_active,omitempty"`
}

// Running is the slot the running system came from (META's active slot
// when the kernel did not say) and its state.
func (st *Status) Running() (meta.Slot, *meta.SlotState) {
	slot := st.Booted
	if slot == "" {
		slot = st.Slots.Active
	}
	return slot, st.Slots.State(slot)
}

// SetBooted records the slot the running kernel came from, and whether it
// is the one META says should run.
func (st *Status) SetBooted(slot meta.Slot) {
	st.Booted = slot
	st.OffActive = offActive(slot, st.Slots)
}

// offActive is Status.OffActive for booted and slots.
func offActive(booted meta.Slot, slots *meta.Slots) string {
	if booted == "" || slots == nil || booted == slots.Active || slots.Phase == meta.PhaseTrial && booted == slots.Trial {
		return ""
	}
	act := slots.State(slots.Active)
	what := act.State
	if act.Version != "" {
		what = act.Version + ", " + what
	}
	return fmt.Sprintf("this system booted slot %s, but META's active slot is %s (%s): slot %s runs until the next boot (picked by hand in the boot menu, or the early-boot switch to slot %s failed: see the transitions)",
		booted, slots.Active, what, booted, slots.Active)
}

// BootedSlot reads the slot the running kernel was booted from, from
// /proc/cmdline; "" when it was not booted through a stagehand entry.
func BootedSlot() meta.Slot {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return ""
	}
	v, _ := cmdline.Get(string(b), "stagehand.slot")
	if s := meta.Slot(v); s == meta.SlotA || s == meta.SlotB {
		return s
	}
	return ""
}

// ReadStatus reads the state from the META of diskPath.
func ReadStatus(ctx context.Context, diskPath string) (*Status, error) {
	store, d, err := disk.OpenMETA(ctx, diskPath, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	b := store.Block()
	st := &Status{Disk: diskPath, Booted: BootedSlot(), Generation: store.Generation(), Damaged: store.Damaged()}
	if st.Slots, err = b.Slots(); err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}
	if st.Staged, _, err = b.Staged(); err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}
	if st.Transitions, err = b.Transitions(); err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}
	if st.Transitions == nil {
		st.Transitions = []meta.Transition{}
	}
	st.SetBooted(st.Booted)
	return st, nil
}

// ErrNothingStaged is returned by Cancel when there is nothing to drop.
var ErrNothingStaged = fmt.Errorf("nothing is staged")

// Cancel drops the staged payload: META first (synced), then the payload's
// bytes in STAGE are zeroed.
func Cancel(ctx context.Context, diskPath string, now time.Time) (*meta.Staged, error) {
	w, err := openForWrite(ctx, diskPath)
	if err != nil {
		return nil, err
	}
	defer w.disk.Close()
	store, stage, b, slots := w.store, w.stage, w.block, w.slots
	st, ok, err := b.Staged()
	if err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}
	if !ok {
		return nil, ErrNothingStaged
	}
	if slots.Phase != meta.PhaseStaged && slots.Phase != meta.PhaseIdle {
		return nil, fmt.Errorf("%w: the upgrade is already %s; use stager rollback instead", ErrBusy, slots.Phase)
	}
	err = store.Update(func(b *meta.Block) error {
		b.Delete(meta.TagStaged)
		if v, _ := b.Get(meta.TagTalosStagedImageRef); string(v) == st.Image {
			b.Delete(meta.TagTalosStagedImageRef)
		}
		slots.Phase = meta.PhaseIdle
		if err := b.SetSlots(slots); err != nil {
			return err
		}
		return b.AddTransition(meta.Transition{Time: now.UTC(), From: meta.PhaseStaged, To: meta.PhaseIdle, Slot: st.Target, Reason: "cancelled " + st.Image})
	})
	if err != nil {
		return nil, err
	}
	start, end := payload.Extent(st.Artifacts, stage.Size)
	if err := zero(stage, start, end); err != nil {
		return st, fmt.Errorf("staged payload dropped from META, but clearing STAGE failed: %w", err)
	}
	return st, nil
}

// Clear zeroes the bytes of a payload that META no longer refers to
// (confirmed, rolled back): STAGE holds nothing but what META records.
func Clear(stage *disk.Region, st *meta.Staged) error {
	start, end := payload.Extent(st.Artifacts, stage.Size)
	return zero(stage, start, end)
}
