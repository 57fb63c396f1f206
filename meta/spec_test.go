package meta

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// This file is an encoder and a decoder written from DESIGN.md's description
// of the format alone, sharing no code with the package: the store's output
// is checked against it, and its output is read by the store.

type specEntry struct {
	tag   uint32
	value []byte
}

func specEncode(entries []specEntry) []byte {
	const l = 256 * 1024
	buf := make([]byte, l)
	binary.BigEndian.PutUint32(buf[0:4], 0x5a4b3c2d)
	off := 4
	for _, e := range entries {
		binary.BigEndian.PutUint32(buf[off:off+4], e.tag)
		binary.BigEndian.PutUint32(buf[off+4:off+8], uint32(len(e.value)))
		copy(buf[off+8:], e.value)
		off += 8 + len(e.value)
	}
	binary.BigEndian.PutUint32(buf[l-4:], 0xa5b4c3d2)
	sum := sha256.Sum256(buf) // checksum field is still zero here
	copy(buf[l-36:l-4], sum[:])
	return buf
}

func specDecode(buf []byte) ([]specEntry, error) {
	const l = 256 * 1024
	if len(buf) != l {
		return nil, fmt.Errorf("length %d", len(buf))
	}
	if binary.BigEndian.Uint32(buf[0:4]) != 0x5a4b3c2d || binary.BigEndian.Uint32(buf[l-4:]) != 0xa5b4c3d2 {
		return nil, errors.New("magic")
	}
	zeroed := append([]byte(nil), buf...)
	for i := l - 36; i < l-4; i++ {
		zeroed[i] = 0
	}
	if sha256.Sum256(zeroed) != [32]byte(buf[l-36:l-4]) {
		return nil, errors.New("checksum")
	}
	var out []specEntry
	for off := 4; off+8 <= l-36; {
		tag := binary.BigEndian.Uint32(buf[off:])
		if tag == 0 {
			break
		}
		n := int(binary.BigEndian.Uint32(buf[off+4:]))
		if off+8+n > l-36 {
			return nil, errors.New("entry overflows")
		}
		out = append(out, specEntry{tag, append([]byte(nil), buf[off+8:off+8+n]...)})
		off += 8 + n
	}
	return out, nil
}
