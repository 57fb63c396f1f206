// Package tpmseal seals a secret to a TPM under a signed PCR 11 policy and
// unseals it, as systemd-cryptenroll --tpm2-public-key and
// systemd-cryptsetup do for a unified kernel image's .pcrsig: the secret
// unseals only while PCR 11 holds a value that the key's owner signed, the
// value systemd-stub leaves after measuring a UKI the firmware started. The
// VM tests' OS (qemu-tests/testos) uses it for a health check that needs
// the TPM, the test on the host to seal the secret against swtpm.
package tpmseal

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// PCR is the one PCR the policies bind: systemd-stub measures a UKI's
// sections into it.
const PCR = 11

// srk is the storage root key every seal and unseal recreates from the
// owner hierarchy's seed.
func srk(tpm transport.TPM) (tpm2.NamedHandle, func(), error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		return tpm2.NamedHandle{}, nil, fmt.Errorf("creating the storage root key: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, func() { flush(tpm, rsp.ObjectHandle) }, nil
}

func flush(tpm transport.TPM, h tpm2.TPMHandle) { tpm2.FlushContext{FlushHandle: h}.Execute(tpm) }

// PublicKey parses the PEM of the policy signing key (.pcrpkey).
func PublicKey(pemBytes []byte) (*rsa.PublicKey, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, errors.New("the PCR public key is not PEM")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the PCR public key: %w", err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("the PCR public key is a %T, not RSA", k)
	}
	return rk, nil
}

// loadKey loads the signing key's public part into the owner hierarchy
// (a key loaded into the null hierarchy gets no usable ticket).
func loadKey(tpm transport.TPM, k *rsa.PublicKey) (tpm2.NamedHandle, func(), error) {
	exp := uint32(k.E)
	if k.E == 65537 {
		exp = 0 // the TPM's default
	}
	pub := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, Decrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMKeyBits(k.N.BitLen()),
			Exponent:  exp,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, (k.N.BitLen()+7)/8))}),
	}
	rsp, err := tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHOwner}.Execute(tpm)
	if err != nil {
		return tpm2.NamedHandle{}, nil, fmt.Errorf("loading the PCR public key: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, func() { flush(tpm, rsp.ObjectHandle) }, nil
}

// Seal seals secret under the storage root key, unsealable only through a
// PCR 11 policy signed by the key of pubPEM. It returns the blob (the
// sealed object's TPM2B_PRIVATE then TPM2B_PUBLIC, as systemd keeps them)
// and the object's policy digest (a systemd-tpm2 token's tpm2-policy-hash).
func Seal(tpm transport.TPM, pubPEM, secret []byte) (blob, policy []byte, err error) {
	k, err := PublicKey(pubPEM)
	if err != nil {
		return nil, nil, err
	}
	key, unload, err := loadKey(tpm, k)
	if err != nil {
		return nil, nil, err
	}
	defer unload()
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, nil, err
	}
	if err := (tpm2.PolicyAuthorize{KeySign: key.Name}).Update(calc); err != nil {
		return nil, nil, err
	}
	parent, drop, err := srk(tpm)
	if err != nil {
		return nil, nil, err
	}
	defer drop()
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgKeyedHash,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true},
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: calc.Hash().Digest},
		}),
	}.Execute(tpm)
	if err != nil {
		return nil, nil, fmt.Errorf("sealing: %w", err)
	}
	return append(tpm2.Marshal(rsp.OutPrivate), tpm2.Marshal(rsp.OutPublic)...), calc.Hash().Digest, nil
}

// Signature is one entry of a .pcrsig (systemd-measure sign's JSON): the
// PolicyPCR digest ("pol") of a PCR 11 value and the key's signature of it.
type Signature struct {
	PCRs   []int  `json:"pcrs"`
	Pkfp   string `json:"pkfp"`
	Policy string `json:"pol"`
	Sig    string `json:"sig"`
}

// Signatures parses a .pcrsig's SHA-256 bank.
func Signatures(pcrsig []byte) ([]Signature, error) {
	var banks map[string][]Signature
	if err := json.Unmarshal(pcrsig, &banks); err != nil {
		return nil, fmt.Errorf("the PCR signature: %w", err)
	}
	return banks["sha256"], nil
}

// ErrNoSignedValue says PCR 11 holds a value nobody signed: not the boot of
// a UKI whose signatures were given (a kexec leaves the previous boot's).
var ErrNoSignedValue = errors.New("PCR 11 holds no value the key signed")

// Unseal unseals blob (Seal's) with the signatures of the running UKI
// (its .pcrsig) and the key of pubPEM (its .pcrpkey): the TPM computes the
// PolicyPCR digest of PCR 11 as it is now, one signature must be of that
// digest, the TPM checks it and authorizes the policy.
func Unseal(tpm transport.TPM, blob, pubPEM, pcrsig []byte) ([]byte, error) {
	k, err := PublicKey(pubPEM)
	if err != nil {
		return nil, err
	}
	sigs, err := Signatures(pcrsig)
	if err != nil {
		return nil, err
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](blob)
	if err != nil {
		return nil, fmt.Errorf("the sealed blob: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](blob[len(tpm2.Marshal(*priv)):])
	if err != nil {
		return nil, fmt.Errorf("the sealed blob: %w", err)
	}
	parent, drop, err := srk(tpm)
	if err != nil {
		return nil, err
	}
	defer drop()
	obj, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    *priv, InPublic: *pub,
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("loading the sealed object (sealed by another TPM?): %w", err)
	}
	defer flush(tpm, obj.ObjectHandle)
	key, unload, err := loadKey(tpm, k)
	if err != nil {
		return nil, err
	}
	defer unload()

	sess, end, err := tpm2.PolicySession(tpm, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, fmt.Errorf("starting a policy session: %w", err)
	}
	defer end()
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(PCR)}}}
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: sel}).Execute(tpm); err != nil {
		return nil, fmt.Errorf("PolicyPCR: %w", err)
	}
	got, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("PolicyGetDigest: %w", err)
	}
	pol := got.PolicyDigest.Buffer
	var sig []byte
	for _, s := range sigs {
		if s.Policy == hex.EncodeToString(pol) {
			if sig, err = base64.StdEncoding.DecodeString(s.Sig); err != nil {
				return nil, fmt.Errorf("the PCR signature: %w", err)
			}
		}
	}
	if sig == nil {
		return nil, fmt.Errorf("%w (its policy digest %x is not among the %d signed)", ErrNoSignedValue, pol, len(sigs))
	}
	// The key signed SHA-256 of the policy digest (RSASSA); the TPM checks
	// the signature of that hash and gives a ticket.
	h := sha256.Sum256(pol)
	ver, err := tpm2.VerifySignature{
		KeyHandle: key.Handle,
		Digest:    tpm2.TPM2BDigest{Buffer: h[:]},
		Signature: tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig},
			}),
		},
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("the TPM refuses the PCR signature: %w", err)
	}
	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  sess.Handle(),
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: pol},
		KeySign:        key.Name,
		CheckTicket:    ver.Validation,
	}).Execute(tpm); err != nil {
		return nil, fmt.Errorf("PolicyAuthorize: %w", err)
	}
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: sess}}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}
	return rsp.OutData.Buffer, nil
}

// PCR11 reads PCR 11 of the SHA-256 bank.
func PCR11(tpm transport.TPM) ([]byte, error) {
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(PCR)}}}
	rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(tpm)
	if err != nil {
		return nil, err
	}
	if len(rsp.PCRValues.Digests) != 1 {
		return nil, fmt.Errorf("PCR 11: %d values", len(rsp.PCRValues.Digests))
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}
