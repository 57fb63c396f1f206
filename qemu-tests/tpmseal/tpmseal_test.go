package tpmseal_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/stagehand-dev/stagehand/qemu-tests/tpmseal"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// signFor returns a .pcrsig signing the policy of PCR 11 holding pcr, as
// systemd-measure sign writes it.
func signFor(t *testing.T, key *rsa.PrivateKey, pcrs ...[]byte) []byte {
	t.Helper()
	var sigs []tpmseal.Signature
	for _, pcr := range pcrs {
		calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256(pcr)
		sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(tpmseal.PCR)}}}
		if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: d[:]}, Pcrs: sel}).Update(calc); err != nil {
			t.Fatal(err)
		}
		pol := calc.Hash().Digest
		h := sha256.Sum256(pol)
		sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, h[:])
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, tpmseal.Signature{PCRs: []int{tpmseal.PCR}, Policy: hex.EncodeToString(pol), Sig: base64.StdEncoding.EncodeToString(sig)})
	}
	b, err := json.Marshal(map[string][]tpmseal.Signature{"sha256": sigs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func extend(t *testing.T, tpm transport.TPM, what string) {
	t.Helper()
	d := sha256.Sum256([]byte(what))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(tpmseal.PCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
}

// TestSealUnseal, on Debian's swtpm: a secret sealed under a signed PCR 11
// policy unseals while PCR 11 holds a signed value, not after one more
// measurement (as after a kexec, which measures nothing, in a boot whose
// value was not signed for the slot), and again at the next power-on of
// the same TPM (its seeds kept, its PCRs reset).
func TestSealUnseal(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	secret := []byte("the volume key")
	tp := &vm.TPM{Dir: t.TempDir()}
	var blob []byte
	err = tp.Use(func(tpm transport.TPM) error {
		if blob, _, err = tpmseal.Seal(tpm, pub, secret); err != nil {
			return err
		}
		extend(t, tpm, ".linux")
		pcr, err := tpmseal.PCR11(tpm)
		if err != nil {
			return err
		}
		got, err := tpmseal.Unseal(tpm, blob, pub, signFor(t, key, make([]byte, 32), pcr))
		if err != nil {
			return err
		}
		if string(got) != string(secret) {
			t.Errorf("unsealed %q, want %q", got, secret)
		}
		extend(t, tpm, "leave-initrd")
		if _, err := tpmseal.Unseal(tpm, blob, pub, signFor(t, key, pcr)); !errors.Is(err, tpmseal.ErrNoSignedValue) {
			t.Errorf("unseal with PCR 11 measured further: %v, want ErrNoSignedValue", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The next power-on: PCR 11 is zero again, the blob loads.
	err = tp.Use(func(tpm transport.TPM) error {
		got, err := tpmseal.Unseal(tpm, blob, pub, signFor(t, key, make([]byte, 32)))
		if err != nil {
			return err
		}
		if string(got) != string(secret) {
			t.Errorf("unsealed %q after a power-on, want %q", got, secret)
		}
		// Signed by another key: the TPM refuses it.
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		if _, err := tpmseal.Unseal(tpm, blob, pub, signFor(t, other, make([]byte, 32))); err == nil {
			t.Error("a signature by another key unsealed the secret")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
