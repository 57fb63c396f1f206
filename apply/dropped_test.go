package apply

import (
	"context"
	"testing"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/stage"
)

// staged returns the staged record of the machine's META.
func (m *machine) staged() *meta.Staged {
	m.t.Helper()
	st, err := stage.ReadStatus(context.Background(), m.img)
	if err != nil {
		m.t.Fatal(err)
	}
	return st.Staged
}

// TestDropped: a payload that META stops referring to without being
// confirmed (refused at the apply, rolled back by prestage or by stager
// rollback) is handed to the caller to clear from STAGE, as a confirmed
// one is.
func TestDropped(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		m := newMachine(t)
		st := m.staged()
		k, _ := payload.Find(st.Artifacts, payload.Kernel)
		d, err := disk.Open(m.img, true)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := d.Find(disk.LabelSTAGE)
		b := make([]byte, 8)
		r.ReadAt(b, k.Offset+100)
		b[0] ^= 0xff
		r.WriteAt(b, k.Offset+100)
		d.Close()
		dec := m.prestage(meta.SlotA)
		if dec.Action != Continue || dec.Dropped == nil || dec.Dropped.Digest != st.Digest {
			t.Fatalf("decision %+v, want continue with the refused payload %s dropped", dec, st.Digest)
		}
	})
	t.Run("rolled back by prestage", func(t *testing.T) {
		m := newMachine(t)
		st := m.staged()
		if d := m.prestage(meta.SlotA); d.Action != Kexec || d.Dropped != nil {
			t.Fatalf("apply: %+v", d)
		}
		m.prestage(meta.SlotB) // trial boot 1, then b dies
		dec := m.prestage(meta.SlotA)
		if dec.Dropped == nil || dec.Dropped.Digest != st.Digest || m.slots().B.State != "bad" {
			t.Fatalf("decision %+v, slots %+v: want the rolled back payload %s dropped", dec, m.slots(), st.Digest)
		}
	})
	t.Run("given up by stager rollback", func(t *testing.T) {
		m := newMachine(t)
		st := m.staged()
		m.prestage(meta.SlotA)
		m.prestage(meta.SlotB)
		dk := m.open(meta.SlotB)
		res, err := Rollback(context.Background(), &dk.Env)
		dk.Close()
		if err != nil || res.Staged == nil || res.Staged.Digest != st.Digest {
			t.Fatalf("Rollback: %+v, %v: want the given-up payload %s", res, err, st.Digest)
		}
	})
}
