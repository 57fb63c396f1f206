package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/scrypt"
)

// PEM block types of cosign's keys.
const (
	PublicKeyPEMType       = "PUBLIC KEY"                     // PKIX, as cosign.pub
	PrivateKeyPEMType      = "ENCRYPTED SIGSTORE PRIVATE KEY" // cosign ≥ 2.0
	OldPrivateKeyPEMType   = "ENCRYPTED COSIGN PRIVATE KEY"   // cosign 1.x
	maxEncryptedPrivateKey = 64 << 10
)

// ErrKey marks a key that cannot be used.
var ErrKey = errors.New("unusable key")

// LoadPublicKey reads a cosign public key: a PEM "PUBLIC KEY" block
// holding a PKIX ECDSA P-256 key (what `cosign generate-key-pair` writes to
// cosign.pub).
func LoadPublicKey(b []byte) (*ecdsa.PublicKey, error) {
	p, _ := pem.Decode(b)
	if p == nil {
		return nil, fmt.Errorf("%w: no PEM block (want a cosign public key, -----BEGIN %s-----)", ErrKey, PublicKeyPEMType)
	}
	if p.Type != PublicKeyPEMType {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrKey, p.Type, PublicKeyPEMType)
	}
	k, err := x509.ParsePKIXPublicKey(p.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return checkPublic(k)
}

func checkPublic(k crypto.PublicKey) (*ecdsa.PublicKey, error) {
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T; only ECDSA P-256 keys (cosign generate-key-pair) are supported", ErrKey, k)
	}
	if ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: ECDSA on %s; only P-256 is supported", ErrKey, ek.Curve.Params().Name)
	}
	return ek, nil
}

// MarshalPublicKey encodes pub as cosign.pub.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: PublicKeyPEMType, Bytes: der}), nil
}

// Fingerprint names a public key: the SHA-256 of its PKIX DER encoding, in
// hex (`openssl pkey -pubin -in cosign.pub -outform DER | sha256sum`).
func Fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// encryptedKey is the body of an encrypted private key PEM block: the JSON
// of go-securesystemslib's encrypted package, as cosign writes it.
type encryptedKey struct {
	KDF struct {
		Name   string       `json:"name"`
		Params scryptParams `json:"params"`
		Salt   []byte       `json:"salt"`
	} `json:"kdf"`
	Cipher struct {
		Name  string `json:"name"`
		Nonce []byte `json:"nonce"`
	} `json:"cipher"`
	Ciphertext []byte `json:"ciphertext"`
}

type scryptParams struct {
	N int `json:"N"`
	R int `json:"r"`
	P int `json:"p"`
}

// The scrypt parameters cosign's library accepts (legacy 2^15, standard
// 2^16, OWASP 2^17; r 8, p 1): others are refused before any work, so that
// a key file cannot make scrypt take gigabytes.
var scryptAllowed = []scryptParams{{1 << 15, 8, 1}, {1 << 16, 8, 1}, {1 << 17, 8, 1}}

// ErrPassword marks a wrong password (or a damaged key file: nacl's
// secretbox cannot tell them apart).
var ErrPassword = errors.New("wrong password for the private key")

// LoadPrivateKey decrypts a cosign private key (cosign.key): a PEM
// "ENCRYPTED SIGSTORE PRIVATE KEY" (or cosign 1.x's "ENCRYPTED COSIGN
// PRIVATE KEY") block whose body is scrypt + nacl/secretbox over the PKCS#8
// DER of an ECDSA P-256 key.
func LoadPrivateKey(b, password []byte) (*ecdsa.PrivateKey, error) {
	p, _ := pem.Decode(b)
	if p == nil {
		return nil, fmt.Errorf("%w: no PEM block (want a cosign private key, -----BEGIN %s-----)", ErrKey, PrivateKeyPEMType)
	}
	if p.Type != PrivateKeyPEMType && p.Type != OldPrivateKeyPEMType {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrKey, p.Type, PrivateKeyPEMType)
	}
	if len(p.Bytes) > maxEncryptedPrivateKey {
		return nil, fmt.Errorf("%w: encrypted key of %d bytes", ErrKey, len(p.Bytes))
	}
	var e encryptedKey
	if err := json.Unmarshal(p.Bytes, &e); err != nil {
		return nil, fmt.Errorf("%w: encrypted key: %v", ErrKey, err)
	}
	if e.KDF.Name != "scrypt" || e.Cipher.Name != "nacl/secretbox" {
		return nil, fmt.Errorf("%w: encrypted with %q/%q, want scrypt/nacl/secretbox", ErrKey, e.KDF.Name, e.Cipher.Name)
	}
	allowed := false
	for _, a := range scryptAllowed {
		allowed = allowed || a == e.KDF.Params
	}
	if !allowed {
		return nil, fmt.Errorf("%w: unsupported scrypt parameters N=%d r=%d p=%d", ErrKey, e.KDF.Params.N, e.KDF.Params.R, e.KDF.Params.P)
	}
	var nonce [24]byte
	if len(e.Cipher.Nonce) != len(nonce) {
		return nil, fmt.Errorf("%w: nonce of %d bytes, want %d", ErrKey, len(e.Cipher.Nonce), len(nonce))
	}
	copy(nonce[:], e.Cipher.Nonce)
	k, err := scrypt.Key(password, e.KDF.Salt, e.KDF.Params.N, e.KDF.Params.R, e.KDF.Params.P, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	var key [32]byte
	copy(key[:], k)
	der, ok := secretbox.Open(nil, e.Ciphertext, &nonce, &key)
	if !ok {
		return nil, ErrPassword
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	ek, ok := priv.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T; only ECDSA P-256 keys (cosign generate-key-pair) are supported", ErrKey, priv)
	}
	if _, err := checkPublic(&ek.PublicKey); err != nil {
		return nil, err
	}
	return ek, nil
}
