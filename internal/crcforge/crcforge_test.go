package crcforge

import (
	"bytes"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestForge(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{4, 5, 100, 32 << 10} {
		for _, pos := range []int{0, (n - 4) / 2, n - 4} {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			want := r.Uint32()
			orig := bytes.Clone(b)
			if err := Forge(b, pos, want); err != nil {
				t.Fatalf("%d bytes at %d: %v", n, pos, err)
			}
			if got := crc32.Checksum(b, castagnoli); got != want {
				t.Errorf("%d bytes at %d: CRC %08x, want %08x", n, pos, got, want)
			}
			if !bytes.Equal(b[:pos], orig[:pos]) || !bytes.Equal(b[pos+4:], orig[pos+4:]) {
				t.Errorf("%d bytes at %d: bytes outside the window changed", n, pos)
			}
		}
	}
	if err := Forge(make([]byte, 3), 0, 1); err == nil {
		t.Error("Forge of a window past the end: no error")
	}
}
