package authenticode

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestVerify(t *testing.T) {
	p := testPKI(t)
	certs := func(k ...keyPair) []*x509.Certificate {
		var c []*x509.Certificate
		for _, k := range k {
			c = append(c, k.x509)
		}
		return c
	}
	type setup struct {
		image   []byte
		db, dbx *Database
	}
	tests := []struct {
		name string
		// make signs or alters the unsigned image and returns the
		// databases to verify it with.
		make func(t *testing.T, unsigned []byte) setup
		// wantErr is nil when the image is accepted.
		wantErr     error
		wantMsg     string  // a part of the error
		wantTrusted keyPair // the db certificate it is accepted by
		wantSigner  keyPair
		byHash      bool
		// sbverify, when set, is the certificate sbverify must agree
		// with the verdict about (for the cases where sbverify's
		// verdict means the same).
		sbverify string
	}{
		{
			name: "signed by a db certificate",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.db, img), database(t, certs(p.db)), nil}
			},
			wantTrusted: p.db, wantSigner: p.db, sbverify: p.db.cert,
		},
		{
			name: "db holds the root the signer chains to through an included intermediate",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.other, p.ca)), nil}
			},
			wantTrusted: p.ca, wantSigner: p.leaf, sbverify: p.ca.cert,
		},
		{
			name: "db holds the intermediate",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.inter)), nil}
			},
			wantTrusted: p.inter, wantSigner: p.leaf, sbverify: p.inter.cert,
		},
		{
			name: "db holds the leaf",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.leaf)), nil}
			},
			wantTrusted: p.leaf, wantSigner: p.leaf, sbverify: p.leaf.cert,
		},
		{
			name: "the signature lacks the intermediate to the db root",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.leaf, img), database(t, certs(p.ca)), nil}
			},
			wantErr: ErrUntrusted, wantMsg: "signed by a key that db does not hold (signer CN=stagehand test leaf)",
			sbverify: p.ca.cert,
		},
		{
			name: "db holds a certificate without the CA flag that issued the signer",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.byNotCA, img), database(t, certs(p.notCA)), nil}
			},
			wantErr: ErrUntrusted, wantMsg: "signed by a key that db does not hold (signer CN=stagehand test leaf of not a CA)",
			sbverify: p.notCA.cert,
		},
		{
			name: "signed by a key db does not hold",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.other, img), database(t, certs(p.db, p.ca)), nil}
			},
			wantErr: ErrUntrusted, wantMsg: "signed by a key that db does not hold (signer CN=stagehand test other)",
			sbverify: p.db.cert,
		},
		{
			name: "unsigned",
			make: func(t *testing.T, img []byte) setup {
				return setup{img, database(t, certs(p.db)), nil}
			},
			wantErr: ErrNotSigned, wantMsg: "not signed, and db does not hold its hash",
		},
		{
			name: "unsigned, db holds its hash",
			make: func(t *testing.T, img []byte) setup {
				return setup{img, database(t, certs(p.db), mustHash(t, img)), nil}
			},
			byHash: true,
		},
		{
			name: "unsigned, db and dbx hold its hash",
			make: func(t *testing.T, img []byte) setup {
				h := mustHash(t, img)
				return setup{img, database(t, nil, h), database(t, nil, h)}
			},
			wantErr: ErrForbidden, wantMsg: "image hash",
		},
		{
			name: "signed by a db certificate, dbx holds the image hash",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.db, img)
				return setup{s, database(t, certs(p.db)), database(t, nil, mustHash(t, s))}
			},
			wantErr: ErrForbidden, wantMsg: "is in dbx",
		},
		{
			name: "signed by a key db does not hold, db holds the image hash",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.other, img)
				return setup{s, database(t, certs(p.db), mustHash(t, s)), nil}
			},
			byHash: true,
		},
		{
			name: "the signer's certificate is in dbx",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.db, img), database(t, certs(p.db)), database(t, certs(p.db))}
			},
			wantErr: ErrForbidden, wantMsg: "dbx revokes CN=stagehand test db, in the chain of signer CN=stagehand test db",
		},
		{
			name: "the intermediate is in dbx",
			make: func(t *testing.T, img []byte) setup {
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.ca)), database(t, certs(p.inter))}
			},
			wantErr: ErrForbidden, wantMsg: "dbx revokes CN=stagehand test intermediate, in the chain of signer CN=stagehand test leaf",
		},
		{
			name: "the hash of the intermediate's TBSCertificate is in dbx",
			make: func(t *testing.T, img []byte) setup {
				tbs := sha256.Sum256(p.inter.x509.RawTBSCertificate)
				dbx := &Database{Lists: []SignatureList{{Type: CertX509SHA256, Size: 16 + 48,
					Signatures: []Signature{{Data: append(tbs[:], make([]byte, 16)...)}}}}}
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.ca)), dbx}
			},
			wantErr: ErrForbidden, wantMsg: "dbx revokes CN=stagehand test intermediate, in the chain of signer CN=stagehand test leaf",
		},
		{
			name: "the hash of the db root's TBSCertificate is in dbx",
			make: func(t *testing.T, img []byte) setup {
				tbs := sha256.Sum256(p.ca.x509.RawTBSCertificate)
				dbx := &Database{Lists: []SignatureList{{Type: CertX509SHA256, Size: 16 + 48,
					Signatures: []Signature{{Data: append(tbs[:], make([]byte, 16)...)}}}}}
				return setup{sbsign(t, p.leaf, img, p.inter), database(t, certs(p.ca)), dbx}
			},
			wantErr: ErrForbidden, wantMsg: "dbx revokes CN=stagehand test CA of db, which signer CN=stagehand test leaf chains to",
		},
		{
			name: "two signatures, the second by a db certificate",
			make: func(t *testing.T, img []byte) setup {
				return setup{addSignature(t, sbsign(t, p.other, img), sbsign(t, p.db, img)), database(t, certs(p.db)), nil}
			},
			wantTrusted: p.db, wantSigner: p.db,
		},
		{
			name: "two signatures, neither by a db certificate",
			make: func(t *testing.T, img []byte) setup {
				return setup{addSignature(t, sbsign(t, p.other, img), sbsign(t, p.leaf, img)), database(t, certs(p.db)), nil}
			},
			wantErr: ErrUntrusted,
			wantMsg: "signature 1: signed by a key that db does not hold (signer CN=stagehand test other); " +
				"signature 2: signed by a key that db does not hold (signer CN=stagehand test leaf)",
		},
		{
			name: "two signatures, the first by a db certificate, the second by one of dbx",
			make: func(t *testing.T, img []byte) setup {
				return setup{addSignature(t, sbsign(t, p.db, img), sbsign(t, p.other, img)), database(t, certs(p.db)), database(t, certs(p.other))}
			},
			wantErr: ErrForbidden, wantMsg: "signature 2: dbx revokes CN=stagehand test other",
		},
		{
			name: "a section changed after signing",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.db, img)
				s[firstSection(t, s)] ^= 1
				return setup{s, database(t, certs(p.db)), nil}
			},
			wantErr: ErrBadSignature, wantMsg: "signed digest does not match the image", sbverify: p.db.cert,
		},
		{
			name: "a section changed after signing and the signed digest rewritten",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.db, img)
				old := mustHash(t, s)
				s[firstSection(t, s)] ^= 1
				replace(t, certTable(t, s), old, mustHash(t, s))
				return setup{s, database(t, certs(p.db)), nil}
			},
			wantErr: ErrBadSignature, wantMsg: "messageDigest attribute does not match", sbverify: p.db.cert,
		},
		{
			name: "the signature's last byte flipped",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.db, img)
				// sbsign's PKCS#7 ends with the signer's signature.
				tab := certTable(t, s)
				tab[binary.LittleEndian.Uint32(tab)-1] ^= 1
				return setup{s, database(t, certs(p.db)), nil}
			},
			wantErr: ErrBadSignature, wantMsg: "does not verify", sbverify: p.db.cert,
		},
		{
			name: "the certificate table's size is 8 bytes short",
			make: func(t *testing.T, img []byte) setup {
				s := sbsign(t, p.db, img)
				pe := mustParse(t, s)
				binary.LittleEndian.PutUint32(s[pe.certDir+4:], pe.certSize-8)
				return setup{s, database(t, certs(p.db)), nil}
			},
			wantErr: ErrBadSignature, wantMsg: "certificate table is corrupt",
		},
	}
	for name, img := range images(t) {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				s := tt.make(t, bytes.Clone(img))
				res, err := verifyBytes(s.image, s.db, s.dbx)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
						t.Fatalf("Verify: %v, want an error wrapping %q and saying %q", err, tt.wantErr, tt.wantMsg)
					}
				} else {
					if err != nil {
						t.Fatalf("Verify: %v", err)
					}
					if !bytes.Equal(res.Digest, mustHash(t, s.image)) || res.ByHash != tt.byHash {
						t.Errorf("Result digest %x, by hash %v; want %x, %v", res.Digest, res.ByHash, mustHash(t, s.image), tt.byHash)
					}
					if !tt.byHash && (!res.Trusted.Equal(tt.wantTrusted.x509) || !res.Signer.Equal(tt.wantSigner.x509)) {
						t.Errorf("accepted as signed by %v through %v, want %v through %v", res.Signer.Subject, res.Trusted.Subject,
							tt.wantSigner.x509.Subject, tt.wantTrusted.x509.Subject)
					}
				}
				if tt.sbverify != "" {
					if got, want := sbverify(t, tt.sbverify, s.image), tt.wantErr == nil; got != want {
						t.Errorf("sbverify --cert %s accepts: %v, Verify: %v", tt.sbverify, got, err)
					}
				}
			})
		}
	}
}

// TestVerifyLargeImage verifies, from a file, a signed image whose
// section holds 100 MiB: Verify must accept it, see a change deep in the
// section, and allocate a small part of the image's size, as the stager
// verifies UKIs of 50-150 MiB under a memory budget of 64 MiB.
func TestVerifyLargeImage(t *testing.T) {
	p := testPKI(t)
	const grow = 100 << 20
	const opt, sec = 0x58, 0x58 + 240 // tinyPE(false)'s optional header and section table
	// tinyPE with its .data section, the first of the table at 0x800,
	// grown by 100 MiB, mostly zeros (sparse in the file); the 0x40 bytes
	// of trailing data follow it.
	small := tinyPE(false)
	head := bytes.Clone(small[:0xa00])
	binary.LittleEndian.PutUint32(head[sec+8:], 0x200+grow)               // VirtualSize
	binary.LittleEndian.PutUint32(head[sec+16:], 0x200+grow)              // SizeOfRawData
	binary.LittleEndian.PutUint32(head[opt+56:], 0x2000+0x200+grow+0xe00) // SizeOfImage
	dir := t.TempDir()
	unsigned := filepath.Join(dir, "unsigned.efi")
	f, err := os.Create(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	marker := int64(0xa00 + grow*4/5) // 80 MiB into the grown section
	for _, w := range []struct {
		off int64
		b   []byte
	}{{0, head}, {marker, []byte("deep in the section")}, {0xa00 + grow, small[0xa00:]}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	signed := filepath.Join(dir, "signed.efi")
	run(t, "sbsign", "--key", p.db.key, "--cert", p.db.cert, "--output", signed, unsigned)
	db := database(t, []*x509.Certificate{p.db.x509})

	img, err := os.OpenFile(signed, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	fi, err := img.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 64<<20 {
		t.Fatalf("the signed image holds %d bytes, want at least 64 MiB", fi.Size())
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := Verify(img, fi.Size(), db, nil)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !res.Signer.Equal(p.db.x509) || !res.Trusted.Equal(p.db.x509) {
		t.Errorf("accepted as signed by %v through %v", res.Signer.Subject, res.Trusted.Subject)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("Verify of a %d-byte image allocated %d bytes in %d objects", fi.Size(), alloc, after.Mallocs-before.Mallocs)
	if alloc >= 8<<20 {
		t.Errorf("Verify of a %d-byte image allocated %d bytes, want under 8 MiB", fi.Size(), alloc)
	}

	if _, err := img.WriteAt([]byte("Deep"), marker); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(img, fi.Size(), db, nil); !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "signed digest does not match") {
		t.Fatalf("Verify after a change 80 MiB into the section: %v, want a digest mismatch", err)
	}
}

// TestVerifyCertTableLimit checks that Verify refuses to read a
// certificate table over 1 MiB, and reads one of 1 MiB.
func TestVerifyCertTableLimit(t *testing.T) {
	const opt = 0x58 // tinyPE(false)'s optional header
	for _, tt := range []struct {
		size uint32
		want string
	}{
		{maxCertTable + 8, "the certificate table of 1048584 bytes is larger than the 1048576 bytes (1 MiB) Verify reads"},
		// One WIN_CERTIFICATE entry of the whole table, not PKCS#7.
		{maxCertTable, "not a DER PKCS#7 SignedData"},
	} {
		b := tinyPE(false)
		off := uint32(len(b))
		binary.LittleEndian.PutUint32(b[opt+112+32:], off)
		binary.LittleEndian.PutUint32(b[opt+112+32+4:], tt.size)
		b = append(b, make([]byte, tt.size)...)
		binary.LittleEndian.PutUint32(b[off:], tt.size)
		binary.LittleEndian.PutUint16(b[off+4:], 0x200)
		binary.LittleEndian.PutUint16(b[off+6:], winCertPKCS)
		if _, err := verifyBytes(b, nil, nil); !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Verify with a certificate table of %d bytes: %v, want an error wrapping %q and saying %q", tt.size, err, ErrBadSignature, tt.want)
		}
	}
}

// TestShortReader checks that an image whose reader ends before its
// stated size is refused, wherever the reader ends.
func TestShortReader(t *testing.T) {
	p := testPKI(t)
	signed := sbsign(t, p.db, tinyPE(false))
	db := database(t, []*x509.Certificate{p.db.x509})
	if _, err := verifyBytes(signed, db, nil); err != nil {
		t.Fatalf("Verify of the whole image: %v", err)
	}
	cert := int(mustParse(t, signed).certOff)
	for _, n := range []int{0x30, 0x50, 0x100, 0x500, 0xa20, cert + 8, len(signed) - 1} {
		r := bytes.NewReader(signed[:n])
		// The hash does not read the certificate table.
		if _, err := Hash(r, int64(len(signed))); n < cert && !errors.Is(err, io.ErrUnexpectedEOF) || n >= cert && err != nil {
			t.Errorf("Hash of an image whose reader ends at %#x (the certificate table at %#x): %v", n, cert, err)
		}
		if _, err := Verify(r, int64(len(signed)), db, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Verify of an image whose reader ends at %#x: %v, want an error wrapping io.ErrUnexpectedEOF", n, err)
		}
	}
	if _, err := Hash(bytes.NewReader(signed), -1); err == nil {
		t.Error("Hash of an image of -1 bytes: no error")
	}
}
