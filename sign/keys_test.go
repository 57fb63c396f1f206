package sign

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

func TestLoadPublicKey(t *testing.T) {
	k := newKey(t)
	good, err := MarshalPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	pemOf := func(typ string, pub any) []byte {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	}
	for _, tc := range []struct {
		name string
		in   []byte
		err  string
	}{
		{"cosign.pub", good, ""},
		{"with text around", append(append([]byte("comment\n"), good...), "trailer\n"...), ""},
		{"empty", nil, "no PEM block"},
		{"private key", encryptKey(t, k, nil, PrivateKeyPEMType), `PEM block is "ENCRYPTED SIGSTORE PRIVATE KEY"`},
		{"certificate type", pemOf("CERTIFICATE", &k.PublicKey), `PEM block is "CERTIFICATE"`},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: PublicKeyPEMType, Bytes: []byte("xx")}), "asn1"},
		{"P-384", pemOf(PublicKeyPEMType, &p384.PublicKey), "only P-256"},
		{"RSA", pemOf(PublicKeyPEMType, &rsaKey.PublicKey), "only ECDSA P-256"},
		{"ed25519", pemOf(PublicKeyPEMType, edPub), "only ECDSA P-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := LoadPublicKey(tc.in)
			if tc.err == "" {
				if err != nil || !pub.Equal(&k.PublicKey) {
					t.Fatalf("LoadPublicKey = %v, %v", pub, err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("LoadPublicKey = %v; want an ErrKey saying %q", err, tc.err)
			}
		})
	}
}

func TestLoadPrivateKey(t *testing.T) {
	k := newKey(t)
	pass := []byte("correct horse")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, tc := range []struct {
		name string
		in   []byte
		pass []byte
		err  error
		msg  string
	}{
		{"sigstore", encryptKey(t, k, pass, PrivateKeyPEMType), pass, nil, ""},
		{"cosign 1.x", encryptKey(t, k, pass, OldPrivateKeyPEMType), pass, nil, ""},
		{"empty password", encryptKey(t, k, nil, PrivateKeyPEMType), []byte{}, nil, ""},
		{"wrong password", encryptKey(t, k, pass, PrivateKeyPEMType), []byte("wrong"), ErrPassword, "wrong password"},
		{"unencrypted PKCS#8", func() []byte {
			der, _ := x509.MarshalPKCS8PrivateKey(k)
			return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		}(), pass, ErrKey, `PEM block is "PRIVATE KEY"`},
		{"public key", func() []byte { b, _ := MarshalPublicKey(&k.PublicKey); return b }(), pass, ErrKey, `PEM block is "PUBLIC KEY"`},
		{"RSA inside", encryptKey(t, rsaKey, pass, PrivateKeyPEMType), pass, ErrKey, "only ECDSA P-256"},
		{"not JSON", pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: []byte("{")}), pass, ErrKey, "encrypted key"},
		{"costly scrypt", pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: []byte(`{"kdf":{"name":"scrypt","params":{"N":1073741824,"r":8,"p":1},"salt":""},"cipher":{"name":"nacl/secretbox","nonce":""},"ciphertext":""}`)}), pass, ErrKey, "unsupported scrypt parameters"},
		{"other cipher", pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: []byte(`{"kdf":{"name":"pbkdf2"},"cipher":{"name":"aes"}}`)}), pass, ErrKey, `"pbkdf2"/"aes"`},
		{"short nonce", pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: []byte(`{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":""},"cipher":{"name":"nacl/secretbox","nonce":"AAAA"},"ciphertext":""}`)}), pass, ErrKey, "nonce of 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadPrivateKey(tc.in, tc.pass)
			if tc.err == nil {
				if err != nil || !got.Equal(k) {
					t.Fatalf("LoadPrivateKey = %v", err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("LoadPrivateKey = %v; want %v saying %q", err, tc.err, tc.msg)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	k := newKey(t)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	s := sha256.Sum256(der)
	if got := Fingerprint(&k.PublicKey); got != hex.EncodeToString(s[:]) {
		t.Errorf("Fingerprint = %s", got)
	}
	if Fingerprint(&k.PublicKey) == Fingerprint(&newKey(t).PublicKey) {
		t.Error("two keys, one fingerprint")
	}
}
