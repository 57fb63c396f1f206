package disk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// A secret sealed to the TPM under a policy on the boot's measurements
// (systemd-cryptenroll --tpm2-device, with or without a signed PCR 11
// policy) unseals only in a boot the firmware measured: a kexec leaves the
// PCRs as the previous boot left them. A LUKS2 volume holding such a token
// is how an OS relies on it, so stagehand never kexecs where one is.

// LUKS2 header: magic, version 2, the header's size (with its JSON area),
// the JSON metadata from byte 4096 (cryptsetup's LUKS2 on-disk format).
var luksMagic = []byte("LUKS\xba\xbe")

// maxLUKSHeader bounds what TPM2Token reads (cryptsetup's largest is 4 MiB).
const maxLUKSHeader = 4 << 20

// TPM2Token reports whether r begins with a LUKS2 header whose tokens
// include a systemd-tpm2 one. Anything that is not LUKS2 is false.
func TPM2Token(r io.ReaderAt) (bool, error) {
	tokens, err := LUKS2Tokens(r)
	if err != nil {
		return false, err
	}
	for _, t := range tokens {
		var tt struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(t, &tt) == nil && tt.Type == "systemd-tpm2" {
			return true, nil
		}
	}
	return false, nil
}

// LUKS2Tokens returns the tokens of the LUKS2 header r begins with, each
// its JSON object; none when r is not LUKS2.
func LUKS2Tokens(r io.ReaderAt) ([]json.RawMessage, error) {
	hdr := make([]byte, 4096)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		if err == io.EOF {
			return nil, nil
		}
		return nil, err
	}
	if !bytes.Equal(hdr[:6], luksMagic) || binary.BigEndian.Uint16(hdr[6:]) != 2 {
		return nil, nil
	}
	size := binary.BigEndian.Uint64(hdr[8:])
	if size <= 4096 || size > maxLUKSHeader {
		return nil, fmt.Errorf("LUKS2 header size %d is out of range", size)
	}
	area := make([]byte, size-4096)
	if _, err := r.ReadAt(area, 4096); err != nil {
		return nil, fmt.Errorf("reading the LUKS2 metadata: %w", err)
	}
	if i := bytes.IndexByte(area, 0); i >= 0 {
		area = area[:i]
	}
	var md struct {
		Tokens map[string]json.RawMessage `json:"tokens"`
	}
	if err := json.Unmarshal(area, &md); err != nil {
		return nil, fmt.Errorf("the LUKS2 metadata: %w", err)
	}
	var out []json.RawMessage
	for _, t := range md.Tokens {
		out = append(out, t)
	}
	return out, nil
}

// TPM2Sealed names the first partition of d holding a LUKS2 volume with a
// systemd-tpm2 token, "" when none does.
func (d *Disk) TPM2Sealed() (string, error) {
	for _, p := range d.Partitions() {
		r, err := d.region(p)
		if err != nil {
			continue
		}
		ok, err := TPM2Token(r)
		if err != nil {
			return "", fmt.Errorf("%s: %w", r.Name(), err)
		}
		if ok {
			return r.Name(), nil
		}
	}
	return "", nil
}
