package disktest

import (
	"bytes"
	"fmt"
	"io"
)

// SectorSize is the unit a cut can tear a write at.
const SectorSize = 512

// Op is one journalled operation of a Mem: a write, or a sync.
type Op struct {
	Sync bool
	Off  int64
	Data []byte
}

// Mem is an in-memory device (io.ReaderAt, io.WriterAt, Sync) that journals
// every write and sync, so that a test can rebuild what a disk would hold if
// power failed at any point.
type Mem struct {
	base []byte // contents before the first journalled op
	data []byte
	ops  []Op
}

// NewMem returns a device holding a copy of b.
func NewMem(b []byte) *Mem {
	return &Mem{base: bytes.Clone(b), data: bytes.Clone(b)}
}

// ReadAt implements io.ReaderAt.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt; writes past the end fail.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("write of %d bytes at %d past the end (%d)", len(p), off, len(m.data))
	}
	m.ops = append(m.ops, Op{Off: off, Data: bytes.Clone(p)})
	return copy(m.data[off:], p), nil
}

// Sync records a barrier.
func (m *Mem) Sync() error {
	m.ops = append(m.ops, Op{Sync: true})
	return nil
}

// Bytes returns a copy of the current contents.
func (m *Mem) Bytes() []byte { return bytes.Clone(m.data) }

// Ops returns the journal.
func (m *Mem) Ops() []Op { return m.ops }

// Reset makes the current contents the base and empties the journal.
func (m *Mem) Reset() { m.base, m.ops = bytes.Clone(m.data), nil }

// CutAt returns what the device holds if power fails while op k runs
// (k == len(Ops()) means after the last op). Writes completed and followed by
// a sync before k are on disk. Of the writes after the last such sync, up to
// and including op k, each sector survives only if keep(op, sector) says so
// (sectors numbered from the start of that write): the disk may have written
// any of them, in any order.
func (m *Mem) CutAt(k int, keep func(op, sector int) bool) []byte {
	out := bytes.Clone(m.base)
	lastSync := -1
	for i := 0; i < k && i < len(m.ops); i++ {
		if m.ops[i].Sync {
			lastSync = i
		}
	}
	for i := 0; i <= k && i < len(m.ops); i++ {
		op := m.ops[i]
		if op.Sync {
			continue
		}
		if i < lastSync {
			copy(out[op.Off:], op.Data)
			continue
		}
		for s := 0; s*SectorSize < len(op.Data); s++ {
			if keep(i, s) {
				end := min((s+1)*SectorSize, len(op.Data))
				copy(out[op.Off+int64(s*SectorSize):], op.Data[s*SectorSize:end])
			}
		}
	}
	return out
}
