package apply_test

import (
	"context"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// TestDropped: a payload that META stops referring to without being
// confirmed (refused at the apply, rolled back by prestage or by stager
// rollback) is handed to the caller to clear from STAGE, as a confirmed
// one is.
func TestDropped(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		m := applytest.New(t)
		st := m.Staged()
		k, _ := payload.Find(st.Artifacts, payload.Kernel)
		d, err := disk.Open(m.Img, true)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := d.Find(disk.LabelSTAGE)
		b := make([]byte, 8)
		r.ReadAt(b, k.Offset+100)
		b[0] ^= 0xff
		r.WriteAt(b, k.Offset+100)
		d.Close()
		dec := m.Prestage(meta.SlotA)
		if dec.Action != apply.Continue || dec.Dropped == nil || dec.Dropped.Digest != st.Digest {
			t.Fatalf("decision %+v, want continue with the refused payload %s dropped", dec, st.Digest)
		}
	})
	t.Run("rolled back by prestage", func(t *testing.T) {
		m := applytest.New(t)
		st := m.Staged()
		if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Dropped != nil {
			t.Fatalf("apply: %+v", d)
		}
		m.Prestage(meta.SlotB) // trial boot 1, then b dies
		dec := m.Prestage(meta.SlotA)
		if dec.Dropped == nil || dec.Dropped.Digest != st.Digest || m.Slots().B.State != "bad" {
			t.Fatalf("decision %+v, slots %+v: want the rolled back payload %s dropped", dec, m.Slots(), st.Digest)
		}
	})
	t.Run("given up by stager rollback", func(t *testing.T) {
		m := applytest.New(t)
		st := m.Staged()
		m.Prestage(meta.SlotA)
		m.Prestage(meta.SlotB)
		dk := m.Open(meta.SlotB)
		res, err := apply.Rollback(context.Background(), &dk.Env)
		dk.Close()
		if err != nil || res.Staged == nil || res.Staged.Digest != st.Digest {
			t.Fatalf("Rollback: %+v, %v: want the given-up payload %s", res, err, st.Digest)
		}
	})
}
