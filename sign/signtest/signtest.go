// Package signtest makes cosign key pairs for tests, without cosign.
package signtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/scrypt"
)

// NewKey generates an ECDSA P-256 key, the kind cosign generate-key-pair
// makes.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// EncryptKey encodes priv as cosign.key: PKCS#8 DER sealed with
// nacl/secretbox under an scrypt key of password, in JSON, in a PEM block of
// pemType ("ENCRYPTED SIGSTORE PRIVATE KEY" for cosign 2). It uses
// cosign's legacy scrypt cost (N=2^15), which cosign still reads, to keep
// tests quick.
func EncryptKey(t testing.TB, priv any, password []byte, pemType string) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	salt, nonce := make([]byte, 32), make([]byte, 24)
	rand.Read(salt)
	rand.Read(nonce)
	k, err := scrypt.Key(password, salt, 1<<15, 8, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	var key [32]byte
	var n [24]byte
	copy(key[:], k)
	copy(n[:], nonce)
	type params struct {
		N int `json:"N"`
		R int `json:"r"`
		P int `json:"p"`
	}
	var e struct {
		KDF struct {
			Name   string `json:"name"`
			Params params `json:"params"`
			Salt   []byte `json:"salt"`
		} `json:"kdf"`
		Cipher struct {
			Name  string `json:"name"`
			Nonce []byte `json:"nonce"`
		} `json:"cipher"`
		Ciphertext []byte `json:"ciphertext"`
	}
	e.KDF.Name, e.KDF.Params, e.KDF.Salt = "scrypt", params{1 << 15, 8, 1}, salt
	e.Cipher.Name, e.Cipher.Nonce = "nacl/secretbox", nonce
	e.Ciphertext = secretbox.Seal(nil, der, &n, &key)
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: b})
}

// PublicPEM encodes pub as cosign.pub.
func PublicPEM(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// KeyPair writes a new key pair into dir as cosign generate-key-pair does:
// cosign.key (encrypted with password) and cosign.pub; it returns their
// paths and the key.
func KeyPair(t testing.TB, dir, prefix string, password []byte) (keyFile, pubFile string, k *ecdsa.PrivateKey) {
	t.Helper()
	k = NewKey(t)
	keyFile, pubFile = filepath.Join(dir, prefix+".key"), filepath.Join(dir, prefix+".pub")
	if err := os.WriteFile(keyFile, EncryptKey(t, k, password, "ENCRYPTED SIGSTORE PRIVATE KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubFile, PublicPEM(t, &k.PublicKey), 0o644); err != nil {
		t.Fatal(err)
	}
	return keyFile, pubFile, k
}
