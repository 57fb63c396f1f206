package disk

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// luks2 is a LUKS2 header of hdrSize bytes with the JSON metadata js.
func luks2(hdrSize uint64, js string) []byte {
	b := make([]byte, hdrSize+4096)
	copy(b, luksMagic)
	binary.BigEndian.PutUint16(b[6:], 2)
	binary.BigEndian.PutUint64(b[8:], hdrSize)
	copy(b[4096:], js)
	return b
}

func TestTPM2Token(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want bool
		err  bool
	}{
		{"systemd-tpm2 token", luks2(16384, `{"keyslots":{},"tokens":{"0":{"type":"systemd-tpm2","keyslots":["1"],"tpm2-pcrs":[7]}},"segments":{}}`), true, false},
		{"other tokens", luks2(16384, `{"tokens":{"0":{"type":"systemd-fido2"}}}`), false, false},
		{"no tokens", luks2(16384, `{"keyslots":{}}`), false, false},
		{"not LUKS", bytes.Repeat([]byte{0x5a}, 8192), false, false},
		{"LUKS1", func() []byte { b := luks2(16384, "{}"); b[7] = 1; return b }(), false, false},
		{"short", []byte("LUKS"), false, false},
		{"bad JSON", luks2(16384, `{"tokens":`), false, true},
		{"header size out of range", luks2(1<<30, "{}")[:8192], false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TPM2Token(bytes.NewReader(tc.data))
			if got != tc.want || (err != nil) != tc.err {
				t.Errorf("TPM2Token = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzTPM2Token(f *testing.F) {
	f.Add(luks2(16384, `{"tokens":{"0":{"type":"systemd-tpm2"}}}`))
	f.Add([]byte("LUKS\xba\xbe\x00\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		TPM2Token(bytes.NewReader(b))
	})
}
