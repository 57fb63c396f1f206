package authenticode

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseSignatureDatabase feeds arbitrary variable data to
// ParseSignatureDatabase: it must not panic, and what it accepts
// marshals back to the same bytes.
func FuzzParseSignatureDatabase(f *testing.F) {
	owner := mustGUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")
	f.Add(list(CertSHA256, 28+48, 0, 48, owner[:], make([]byte, 32)))
	f.Add(list(CertX509, 28+4+20, 4, 20, []byte("head"), owner[:], []byte("cert")))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseSignatureDatabase(b)
		if err != nil {
			return
		}
		out, err := d.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed database: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("Marshal gives %x, parsed from %x", out, b)
		}
		again, err := ParseSignatureDatabase(out)
		if err != nil || !cmp.Equal(d, again) {
			t.Fatalf("the marshalled database parses to %v, %v", again, err)
		}
		d.Certificates()
	})
}

// FuzzVerify feeds arbitrary images and databases to Verify: it must not
// panic, and what it accepts is accepted for a reason.
func FuzzVerify(f *testing.F) {
	f.Add(tinyPE(false), []byte{}, []byte{})
	f.Add(tinyPE(true), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, image, dbData, dbxData []byte) {
		db, _ := ParseSignatureDatabase(dbData)
		dbx, _ := ParseSignatureDatabase(dbxData)
		h, hashErr := Hash(bytes.NewReader(image), int64(len(image)))
		res, err := Verify(bytes.NewReader(image), int64(len(image)), db, dbx)
		if err != nil {
			return
		}
		if hashErr != nil || !bytes.Equal(res.Digest, h) {
			t.Fatalf("accepted with digest %x; Hash: %x, %v", res.Digest, h, hashErr)
		}
		if res.ByHash == (res.Signer != nil) || (res.Signer == nil) != (res.Trusted == nil) {
			t.Fatalf("accepted by hash %v, signer %v, trusted %v", res.ByHash, res.Signer, res.Trusted)
		}
	})
}
