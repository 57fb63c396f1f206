package meta

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustBlock(t *testing.T, entries ...Entry) *Block {
	t.Helper()
	b := &Block{}
	for _, e := range entries {
		if err := b.Set(e.Tag, e.Value); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TestGolden checks Marshal against bytes worked out by hand from the format;
// the SHA-256 figures were computed outside this code (Python's hashlib over
// the same layout).
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name            string
		entries         []Entry
		head            string // hex of the first bytes
		checksum, whole string
	}{
		{
			name: "empty",
			head: "5a4b3c2d" + "00000000",
			// SHA-256 of a copy with only the magics set.
			checksum: "e7a327df2cfb2c3010ac1a387e9573d46ea52cac7f25db80ad8fbb41aceabf70",
			whole:    "befee9ff7877356cbac0a6fe13544c0182d13773281cdf00576a906f2a2ec155",
		},
		{
			name: "talos image ref and generation",
			entries: []Entry{
				{TagTalosStagedImageRef, []byte("ghcr.io/siderolabs/installer:v1.9.0")},
				{TagGeneration, u64(1)},
			},
			head: "5a4b3c2d" + "00000007" + "00000023" + hex.EncodeToString([]byte("ghcr.io/siderolabs/installer:v1.9.0")) +
				"00000040" + "00000008" + "0000000000000001" + "00000000",
			checksum: "ab7e82bddfdba02efedbc50a4b9876f392c22b4b4908603992f4eeda09894aae",
			whole:    "a60e1158aefc29fda93f18581f5cf2fa0ffa287006777021455204335c7c796a",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf, err := mustBlock(t, tc.entries...).Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if len(buf) != 262144 {
				t.Fatalf("copy is %d bytes, want 262144", len(buf))
			}
			head, _ := hex.DecodeString(tc.head)
			if !bytes.Equal(buf[:len(head)], head) {
				t.Errorf("head = %x, want %x", buf[:len(head)], head)
			}
			if got := hex.EncodeToString(buf[262144-36 : 262144-4]); got != tc.checksum {
				t.Errorf("checksum field = %s, want %s", got, tc.checksum)
			}
			if got := hex.EncodeToString(buf[262144-4:]); got != "a5b4c3d2" {
				t.Errorf("magic2 = %s", got)
			}
			if got := sha256.Sum256(buf); hex.EncodeToString(got[:]) != tc.whole {
				t.Errorf("sha256(copy) = %x, want %s", got, tc.whole)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []Entry
	}{
		{"empty", nil},
		{"one", []Entry{{0x07, []byte("registry.local/os:v2")}}},
		{"empty value", []Entry{{0x09, []byte{}}}},
		{"many, unsorted", []Entry{{0x43, []byte("[]")}, {0x06, []byte("A")}, {0xff, bytes.Repeat([]byte{0xab}, 1000)}, {0x01, nil}}},
		{"exactly full", []Entry{{0x10, make([]byte, Capacity-8)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mustBlock(t, tc.entries...)
			buf, err := b.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Unmarshal(buf)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(normalize(b.Entries()), normalize(got.Entries())); diff != "" {
				t.Errorf("round trip (-want, +got):\n%s", diff)
			}
			again, _ := got.Marshal()
			if !bytes.Equal(buf, again) {
				t.Error("re-encoding a decoded copy changed its bytes")
			}
			// The independent decoder agrees.
			spec, err := specDecode(buf)
			if err != nil {
				t.Fatalf("spec decoder rejects our copy: %v", err)
			}
			if len(spec) != len(tc.entries) {
				t.Fatalf("spec decoder found %d entries, want %d", len(spec), len(tc.entries))
			}
			for i, e := range spec {
				if Tag(e.tag) != tc.entries[i].Tag || !bytes.Equal(e.value, tc.entries[i].Value) {
					t.Errorf("entry %d: spec decoder read %#x=%q", i, e.tag, e.value)
				}
			}
		})
	}
}

// normalize maps nil values to empty ones: the format cannot tell them apart.
func normalize(es []Entry) []Entry {
	for i := range es {
		if es[i].Value == nil {
			es[i].Value = []byte{}
		}
	}
	return es
}

func TestSpecEncodedReads(t *testing.T) {
	// A META as Talos writes it: tags in map order, no generation.
	buf := specEncode([]specEntry{{8, []byte(`{"Force":false}`)}, {7, []byte("ghcr.io/siderolabs/installer:v1.8.0")}, {6, []byte("A")}})
	b, err := Unmarshal(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{8, []byte(`{"Force":false}`)}, {7, []byte("ghcr.io/siderolabs/installer:v1.8.0")}, {6, []byte("A")}}
	if diff := cmp.Diff(want, b.Entries()); diff != "" {
		t.Errorf("(-want, +got):\n%s", diff)
	}
	again, _ := b.Marshal()
	if !bytes.Equal(again, buf) {
		t.Error("a Talos-written copy does not re-encode to the same bytes")
	}
}

func TestUnmarshalRejects(t *testing.T) {
	good := specEncode([]specEntry{{7, []byte("ref")}})
	reseal := func(buf []byte) []byte { // recompute the checksum after a change
		for i := 262144 - 36; i < 262144-4; i++ {
			buf[i] = 0
		}
		s := sha256.Sum256(buf)
		copy(buf[262144-36:], s[:])
		return buf
	}
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		buf  []byte
		want error
	}{
		{"short", good[:1000], ErrMalformed},
		{"zeros", make([]byte, 262144), ErrBadMagic},
		{"magic1", mod(func(b []byte) []byte { b[0] ^= 1; return reseal(b) }), ErrBadMagic},
		{"magic2", mod(func(b []byte) []byte { b[262143] ^= 1; return reseal(b) }), ErrBadMagic},
		{"checksum field", mod(func(b []byte) []byte { b[262144-20] ^= 1; return b }), ErrChecksum},
		{"flipped value bit", mod(func(b []byte) []byte { b[13] ^= 0x40; return b }), ErrChecksum},
		{"flipped padding bit", mod(func(b []byte) []byte { b[200000] = 1; return b }), ErrChecksum},
		{"length overflows", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 262104); return reseal(b) }), ErrMalformed},
		{"length huge", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 0xffffffff); return reseal(b) }), ErrMalformed},
		{"tag above 0xff", reseal(specEncode([]specEntry{{0x107, []byte("x")}})), ErrMalformed},
		{"repeated tag", specEncode([]specEntry{{7, []byte("a")}, {7, []byte("b")}}), ErrMalformed},
		{"bytes after end", mod(func(b []byte) []byte { b[100] = 1; return reseal(b) }), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := bytes.Clone(tc.buf)
			_, err := Unmarshal(tc.buf)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Unmarshal error = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(before, tc.buf) {
				t.Error("Unmarshal modified its input")
			}
		})
	}
}

func TestUnmarshalDoesNotAlias(t *testing.T) {
	buf := specEncode([]specEntry{{7, []byte("ref")}})
	b, err := Unmarshal(buf)
	if err != nil {
		t.Fatal(err)
	}
	buf[12] = 'X'
	if v, _ := b.Get(7); string(v) != "ref" {
		t.Errorf("value changed with the input buffer: %q", v)
	}
}

func TestCapacity(t *testing.T) {
	b := &Block{}
	if err := b.Set(0x10, make([]byte, Capacity-8)); err != nil {
		t.Fatalf("filling to exactly %d bytes: %v", Capacity, err)
	}
	if err := b.Set(0x11, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("one more entry: err = %v, want ErrFull", err)
	}
	if _, ok := b.Get(0x11); ok {
		t.Error("a refused Set left its tag behind")
	}
	// Replacing a value counts the old one as freed.
	if err := b.Set(0x10, make([]byte, Capacity-8)); err != nil {
		t.Errorf("replacing with the same size: %v", err)
	}
	if err := b.Set(0x10, make([]byte, Capacity-7)); !errors.Is(err, ErrFull) {
		t.Errorf("replacing with one byte more: err = %v, want ErrFull", err)
	}
	if err := b.Set(0, []byte("x")); err == nil {
		t.Error("tag 0 accepted")
	}
}

func TestSetGetDelete(t *testing.T) {
	b := &Block{}
	for _, e := range []Entry{{1, []byte("one")}, {2, []byte("two")}, {3, []byte("three")}} {
		if err := b.Set(e.Tag, e.Value); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(2, []byte("TWO")); err != nil {
		t.Fatal(err)
	}
	if !b.Delete(1) || b.Delete(1) {
		t.Error("Delete did not report presence correctly")
	}
	want := []Entry{{2, []byte("TWO")}, {3, []byte("three")}}
	if diff := cmp.Diff(want, b.Entries()); diff != "" {
		t.Errorf("(-want, +got):\n%s", diff)
	}
	v, _ := b.Get(2)
	v[0] = 'x'
	if w, _ := b.Get(2); string(w) != "TWO" {
		t.Error("Get returned an alias")
	}
}
