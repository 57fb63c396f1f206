package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
)

// markSlot records in META what apply leaves in slot sl: its state and,
// for a rollback, the transition.
func markSlot(t *testing.T, img string, sl meta.Slot, ss meta.SlotState) {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = store.Update(func(b *meta.Block) error {
		slots, err := b.Slots()
		if err != nil {
			return err
		}
		*slots.State(sl) = ss
		if err := b.SetSlots(slots); err != nil {
			return err
		}
		if ss.Version == "" {
			return nil
		}
		return b.AddTransition(meta.Transition{Time: fixedNow(), From: meta.PhaseTrial, To: meta.PhaseIdle, Slot: sl, Reason: "rolled back: " + ss.Reason})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStageRolledBack: a digest that rolled back on this machine is
// refused with one line, the disk byte for byte as it was (META, and the
// payload staged before); with Retry it stages, saying so. A slot left bad
// by an apply that never got to a trial, or a rollback of another digest,
// does not stand in the way.
func TestStageRolledBack(t *testing.T) {
	reg := testRegistry(t, "", "")
	v3 := newArtifacts(40, mib, 2*mib, "v3")
	img := buildImage(t, v3, "amd64")
	ref := reg + "/stagehand/os:v3"
	push(t, ref, img, nil)
	h, _ := img.Digest()
	digest := h.String()
	before := t.TempDir()
	writeLayout(t, before, buildImage(t, newArtifacts(41, mib, mib, "v2"), "amd64"), "v2")

	bad := func(version, reason string) meta.SlotState {
		return meta.SlotState{State: "bad", Digest: digest, Version: version, Reason: reason}
	}
	const tail = "; stage it again with --retry"
	for _, tc := range []struct {
		name string
		b    meta.SlotState
		want string // the refusal; "" when it stages
	}{
		{"did not confirm", bad("v3", "slot b did not confirm within 3 boots"),
			"image " + digest + " (v3) rolled back on this machine: slot b did not confirm within 3 boots" + tail},
		{"never booted", bad("v3", "slot b was never booted: armed 2 times"),
			"image " + digest + " (v3) rolled back on this machine: slot b was never booted: armed 2 times" + tail},
		{"given up by hand", bad("v3", "slot b given up by stager rollback"),
			"image " + digest + " (v3) rolled back on this machine: slot b given up by stager rollback" + tail},
		{"no version artifact", bad(digest[7:19], "slot b did not confirm within 3 boots"),
			"image " + digest + " rolled back on this machine: slot b did not confirm within 3 boots" + tail},
		{"another digest rolled back", meta.SlotState{State: "bad", Digest: "sha256:" + strings.Repeat("0", 64), Version: "v3-rc1", Reason: "slot b did not confirm within 3 boots"}, ""},
		{"being written", meta.SlotState{State: "bad", Digest: digest, Reason: "being written"}, ""},
		{"its write failed", meta.SlotState{State: "bad", Digest: digest, Reason: "writing the slot: input/output error"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsk := testDisk(t, 32*mib)
			markSlot(t, dsk, meta.SlotB, tc.b)
			stageOK(t, Options{Disk: dsk, Image: "oci:" + before})
			if tc.want == "" {
				stageOK(t, Options{Disk: dsk, Image: ref})
				checkStaged(t, dsk, v3, ref)
				return
			}
			hash := hashFile(t, dsk)
			gen := generation(t, dsk)
			for _, r := range []string{ref, reg + "/stagehand/os@" + digest} {
				_, err := Stage(context.Background(), Options{Disk: dsk, Image: r, Now: fixedNow})
				var rb *RolledBackError
				if !errors.Is(err, ErrRolledBack) || !errors.As(err, &rb) || rb.Slot != meta.SlotB || err.Error() != tc.want {
					t.Fatalf("Stage(%s) = %v; want %q", r, err, tc.want)
				}
			}
			if hashFile(t, dsk) != hash || generation(t, dsk) != gen {
				t.Fatal("the refusal changed the disk")
			}

			var logs []string
			logf := func(f string, args ...any) { logs = append(logs, fmt.Sprintf(f, args...)) }
			stageOK(t, Options{Disk: dsk, Image: ref, Retry: true, Logf: logf})
			checkStaged(t, dsk, v3, ref)
			st, err := ReadStatus(context.Background(), dsk)
			if err != nil {
				t.Fatal(err)
			}
			last := st.Transitions[len(st.Transitions)-1].Reason
			if want := "staged " + ref + " " + digest + " (a retry: it rolled back on slot b before)"; last != want {
				t.Errorf("last transition %q, want %q", last, want)
			}
			var retries []string
			for _, l := range logs {
				if strings.Contains(l, "rolled back on this machine") {
					retries = append(retries, l)
				}
			}
			if len(retries) != 1 || !strings.Contains(retries[0], "rolled back on this machine ("+tc.b.Reason+"): staging it again") {
				t.Errorf("log %q", logs)
			}
			// Staged now: asked again without Retry, it is a no-op.
			if res := stageOK(t, Options{Disk: dsk, Image: ref}); !res.AlreadyStaged {
				t.Errorf("staging it again after the retry: %+v", res)
			}
		})
	}
}

func generation(t *testing.T, img string) uint64 {
	t.Helper()
	st, err := ReadStatus(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return st.Generation
}
