package meta

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// sealed wraps an entries area in magics and a valid checksum, so that the
// fuzzer explores the entry parser rather than the checksum.
func sealed(area []byte) []byte {
	if len(area) > Capacity {
		area = area[:Capacity]
	}
	buf := make([]byte, BlockSize)
	binary.BigEndian.PutUint32(buf, magic1)
	copy(buf[4:], area)
	binary.BigEndian.PutUint32(buf[magic2Offset:], magic2)
	sum := checksum(buf)
	copy(buf[sumOffset:], sum[:])
	return buf
}

// FuzzUnmarshal feeds entries areas (sealed) and raw copies to the decoder:
// it must not panic, and whatever it accepts must re-encode to the same
// bytes and agree with the spec decoder.
func FuzzUnmarshal(f *testing.F) {
	f.Add(false, []byte{0, 0, 0, 7, 0, 0, 0, 3, 'r', 'e', 'f'})
	f.Fuzz(func(t *testing.T, raw bool, data []byte) {
		buf := sealed(data)
		if raw {
			buf = make([]byte, BlockSize)
			copy(buf, data)
		}
		b, err := Unmarshal(buf)
		if err != nil {
			return
		}
		again, err := b.Marshal()
		if err != nil {
			t.Fatalf("accepted copy does not marshal: %v", err)
		}
		if !bytes.Equal(again, buf) {
			t.Fatal("accepted copy re-encodes to different bytes")
		}
		spec, err := specDecode(buf)
		if err != nil {
			t.Fatalf("accepted copy rejected by the spec decoder: %v", err)
		}
		es := b.Entries()
		if len(spec) != len(es) {
			t.Fatalf("%d entries, spec decoder found %d", len(es), len(spec))
		}
		for i := range es {
			if uint32(es[i].Tag) != spec[i].tag || !bytes.Equal(es[i].Value, spec[i].value) {
				t.Fatalf("entry %d differs from the spec decoder", i)
			}
		}
	})
}

// FuzzRecords feeds arbitrary values to the typed record decoders: they must
// not panic, and what they accept must survive a set/get round trip.
func FuzzRecords(f *testing.F) {
	f.Add(uint8(TagStaged), []byte(`{"image":"r","digest":"sha256:00","target":"b","artifacts":[{"name":"vmlinuz","offset":4096,"size":10,"sha256":"00"}]}`))
	f.Fuzz(func(t *testing.T, tag uint8, data []byte) {
		b := &Block{}
		if err := b.Set(Tag(tag%3)+TagStaged, data); err != nil {
			return
		}
		if st, ok, err := b.Staged(); ok && err == nil {
			if err := b.SetStaged(st); err != nil {
				t.Fatalf("accepted staged record does not encode: %v", err)
			}
		}
		if sl, err := b.Slots(); err == nil {
			if err := b.SetSlots(sl); err != nil {
				t.Fatalf("accepted slots record does not encode: %v", err)
			}
		}
		if ts, err := b.Transitions(); err == nil && len(ts) <= MaxTransitions {
			for _, tr := range ts {
				if err := b.AddTransition(tr); err != nil {
					t.Fatalf("accepted transition does not encode: %v", err)
				}
			}
		}
	})
}
