// Package crcforge changes four bytes of a buffer so that its CRC-32C is a
// chosen value: the collision a delta staging must catch when a seed's
// bytes match a chunk's length and CRC-32C but are other bytes. For
// tests.
package crcforge

import (
	"errors"
	"fmt"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Forge sets the four bytes of b at pos so that b's CRC-32C is want. CRC
// is affine over GF(2): the 32 bits of the window that flip it to want
// are solved for by Gaussian elimination.
func Forge(b []byte, pos int, want uint32) error {
	if pos < 0 || pos+4 > len(b) {
		return fmt.Errorf("crcforge: window [%d, %d) outside %d bytes", pos, pos+4, len(b))
	}
	base := crc32.Checksum(b, castagnoli)
	// rows[i]: the CRC change of flipping bit i of the window, with bit i
	// of the solution tracked in the high word.
	rows := make([]uint64, 32)
	for i := range rows {
		b[pos+i/8] ^= 1 << (i % 8)
		rows[i] = uint64(crc32.Checksum(b, castagnoli)^base) | 1<<(32+i)
		b[pos+i/8] ^= 1 << (i % 8)
	}
	for bit := range 32 {
		p := -1
		for i := bit; i < 32; i++ {
			if rows[i]>>bit&1 == 1 {
				p = i
				break
			}
		}
		if p < 0 {
			return errors.New("crcforge: singular")
		}
		rows[bit], rows[p] = rows[p], rows[bit]
		for i := range rows {
			if i != bit && rows[i]>>bit&1 == 1 {
				rows[i] ^= rows[bit]
			}
		}
	}
	target, sol := uint64(base^want), uint64(0)
	for bit := range 32 {
		if target>>bit&1 == 1 {
			sol ^= rows[bit] >> 32
		}
	}
	for i := range 32 {
		if sol>>i&1 == 1 {
			b[pos+i/8] ^= 1 << (i % 8)
		}
	}
	if got := crc32.Checksum(b, castagnoli); got != want {
		return fmt.Errorf("crcforge: %08x, want %08x", got, want)
	}
	return nil
}
