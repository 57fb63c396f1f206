package authenticode

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHash checks Hash against what sbsign signs and against the digest
// osslsigncode calculates.
func TestHash(t *testing.T) {
	need(t, "osslsigncode", "osslsigncode")
	p := testPKI(t)
	digestLine := regexp.MustCompile(`(Current|Calculated) message digest\s*:\s*([0-9A-Fa-f]+)`)
	for name, img := range images(t) {
		t.Run(name, func(t *testing.T) {
			signed := sbsign(t, p.db, img)
			got := mustHash(t, signed)
			// sbsign pads the image to 8 bytes before it hashes it;
			// the certificate table it adds is not hashed.
			padded := append(bytes.Clone(img), make([]byte, (8-len(img)%8)%8)...)
			if h := mustHash(t, padded); !bytes.Equal(h, got) {
				t.Errorf("Hash of the unsigned image %x, of the signed one %x", h, got)
			}
			s, err := parseSignedData(certTable(t, signed)[8:])
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(s.digest, got) {
				t.Errorf("sbsign signed the digest %x, Hash is %x", s.digest, got)
			}
			f := filepath.Join(t.TempDir(), "signed.efi")
			if err := os.WriteFile(f, signed, 0o600); err != nil {
				t.Fatal(err)
			}
			// osslsigncode exits non-zero here: no CA file trusts db.
			out, _ := exec.Command("osslsigncode", "verify", "-in", f).CombinedOutput()
			m := digestLine.FindAllStringSubmatch(string(out), -1)
			if len(m) != 2 {
				t.Fatalf("osslsigncode verify printed no digests:\n%s", out)
			}
			for _, m := range m {
				if want := strings.ToLower(m[2]); want != hex.EncodeToString(got) {
					t.Errorf("osslsigncode's %s message digest is %s, Hash is %x", m[1], want, got)
				}
			}
		})
	}
}

func TestHashMalformed(t *testing.T) {
	set32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	}
	const opt, sec = 0x58, 0x58 + 240 // tinyPE(false)'s optional header and section table
	tests := []struct {
		name   string
		change func([]byte) []byte
	}{
		{"too short", func(b []byte) []byte { return b[:0x30] }},
		{"no PE signature", func(b []byte) []byte { b[0x40] = 'X'; return b }},
		{"PE header offset past the end", set32(0x3c, 0xfffffff0)},
		{"unknown optional header magic", func(b []byte) []byte { b[opt] = 0; return b }},
		{"optional header too short", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x44+16:], 100); return b }},
		{"section table past the end", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x44+2:], 200); return b }},
		{"SizeOfHeaders past the end", set32(opt+60, 0x10000)},
		{"SizeOfHeaders within the data directories", set32(opt+60, 0x90)},
		{"section past the end", set32(sec+16, 0x800)},
		{"section offset overflowing", set32(sec+20, 0xffffff00)},
		{"sections overlapping", func(b []byte) []byte { return set32(sec+20, 0x400)(set32(sec+16, 0x640)(b)) }},
		{"certificate table larger than the file", set32(opt+112+32+4, 0x10000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := hashBytes(tt.change(tinyPE(false))); !errors.Is(err, ErrNotPE) {
				t.Fatalf("Hash: %v, want an error wrapping ErrNotPE", err)
			}
		})
	}
}

// TestHashLayout checks which bytes of the hand-made image the hash
// covers: all but CheckSum and the certificate table entry.
func TestHashLayout(t *testing.T) {
	base := mustHash(t, tinyPE(false))
	tests := []struct {
		name    string
		off     int
		covered bool
	}{
		{"CheckSum", 0x58 + 64, false},
		{"certificate table entry", 0x58 + 112 + 32, false},
		{"Subsystem", 0x58 + 68, true},
		{"padding in the headers", 0x3f0, true},
		{".text", 0x500, true},
		{".data", 0x900, true},
		{"trailing data", 0xa3f, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tinyPE(false)
			b[tt.off] ^= 0x80
			h, err := hashBytes(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := !bytes.Equal(h, base); got != tt.covered {
				t.Errorf("changing byte %#x changes the hash: %v, want %v", tt.off, got, tt.covered)
			}
		})
	}
	// Without a certificate table entry (NumberOfRvaAndSizes 4) the
	// bytes where it would be are hashed.
	b := tinyPE(false)
	binary.LittleEndian.PutUint32(b[0x58+108:], 4)
	h1, err := hashBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	b[0x58+112+32] ^= 1
	if h2, _ := hashBytes(b); bytes.Equal(h1, h2) {
		t.Error("with 4 data directories, the bytes of a fifth are not hashed")
	}
}
