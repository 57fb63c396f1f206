package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/tpmseal"
	"github.com/stagehand-dev/stagehand/systemdboot"
	"github.com/stagehand-dev/stagehand/uki"
)

// Where systemd-stub puts a UKI's .pcrsig and .pcrpkey for the initrd it
// starts (systemd 252).
const (
	stubSignature = "/.extra/tpm2-pcr-signature.json"
	stubPublicKey = "/.extra/tpm2-pcr-public-key.pem"
)

// tpmUnseal is the health check of an OS that keeps a secret sealed to the
// TPM under a signed PCR 11 policy, as systemd-cryptenroll
// --tpm2-public-key makes it: the sealed blob is in the systemd-tpm2 token
// of the LUKS2 volume on the disk's ROOT partition, the signatures are
// those systemd-stub passed (or, where no stub started this boot, those of
// the running slot's UKI on the ESP, so that a failure says what PCR 11
// holds). It prints PCR 11 and the SHA-256 of what it unsealed.
func tpmUnseal() error {
	if err := waitDisks(10 * time.Second); err != nil {
		return err
	}
	d, err := disk.Open("/dev/vda", false)
	if err != nil {
		return err
	}
	defer d.Close()
	blob, tokenKey, err := sealedToken(d)
	if err != nil {
		return err
	}
	sig, pub, from, err := pcrSignature(d)
	if err != nil {
		return err
	}
	if pub == nil {
		pub = tokenKey
	}
	tpm, err := linuxtpm.Open("/dev/tpmrm0")
	if err != nil {
		return fmt.Errorf("opening the TPM: %w", err)
	}
	defer tpm.Close()
	pcr, err := tpmseal.PCR11(tpm)
	if err != nil {
		return fmt.Errorf("reading PCR 11: %w", err)
	}
	secret, err := tpmseal.Unseal(tpm, blob, pub, sig)
	if err != nil {
		return fmt.Errorf("PCR 11 = %x, signatures from %s: %w", pcr, from, err)
	}
	sum := sha256.Sum256(secret)
	say("tpm: PCR 11 = %x, signatures from %s: unsealed sha256:%x", pcr, from, sum)
	return nil
}

// sealedToken reads the sealed blob and the policy key of the systemd-tpm2
// token of the LUKS2 volume on ROOT.
func sealedToken(d *disk.Disk) (blob, pub []byte, err error) {
	r, err := d.Find(disk.LabelRoot)
	if err != nil {
		return nil, nil, err
	}
	tokens, err := disk.LUKS2Tokens(r)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range tokens {
		var tok struct {
			Type   string `json:"type"`
			Blob   string `json:"tpm2-blob"`
			PubKey string `json:"tpm2-pubkey"`
		}
		if json.Unmarshal(t, &tok) != nil || tok.Type != "systemd-tpm2" && tok.Type != "stagehand-test-tpm2" {
			continue
		}
		if blob, err = base64.StdEncoding.DecodeString(tok.Blob); err != nil {
			return nil, nil, fmt.Errorf("the token's tpm2-blob: %w", err)
		}
		if pub, err = base64.StdEncoding.DecodeString(tok.PubKey); err != nil {
			return nil, nil, fmt.Errorf("the token's tpm2-pubkey: %w", err)
		}
		return blob, pub, nil
	}
	return nil, nil, errors.New("no TPM2 token on ROOT's LUKS2 volume")
}

// pcrSignature returns the PCR signatures and key of this boot, and where
// they come from.
func pcrSignature(d *disk.Disk) (sig, pub []byte, from string, err error) {
	if sig, err = os.ReadFile(stubSignature); err == nil {
		pub, _ = os.ReadFile(stubPublicKey)
		return sig, pub, "systemd-stub (" + stubSignature + ")", nil
	}
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		return nil, nil, "", err
	}
	esp, err := fat.Open(r, r.Size)
	if err != nil {
		return nil, nil, "", err
	}
	vars, err := efiVars()
	if err != nil {
		return nil, nil, "", err
	}
	sb := systemdboot.New(esp, systemdboot.WithEFIVars(vars))
	slot := meta.Slot(cmdline()["stagehand.slot"])
	if slot == "" { // a UKI's own command line: the loader says
		slot, _, _ = sb.BootedSlot(context.Background())
	}
	f, err := sb.OpenSlot(context.Background(), slot)
	if err != nil {
		return nil, nil, "", fmt.Errorf("no %s, and slot %q's entry: %w", stubSignature, slot, err)
	}
	defer f.Close()
	if f.UKI == nil {
		return nil, nil, "", fmt.Errorf("no %s, and slot %s is no UKI", stubSignature, slot)
	}
	b, err := io.ReadAll(f.UKI)
	if err != nil {
		return nil, nil, "", err
	}
	u, err := uki.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, nil, "", err
	}
	sec := func(name string) []byte {
		s, ok := u.File.Section(name)
		if !ok || s.Offset()+s.Size() > int64(len(b)) {
			return nil
		}
		return b[s.Offset() : s.Offset()+s.Size()]
	}
	sig, pub = sec(".pcrsig"), sec(".pcrpkey")
	if sig == nil {
		return nil, nil, "", fmt.Errorf("no %s, and slot %s's UKI has no .pcrsig", stubSignature, slot)
	}
	return sig, pub, fmt.Sprintf("slot %s's UKI on the ESP (no %s: no systemd-stub started this boot)", slot, stubSignature), nil
}
