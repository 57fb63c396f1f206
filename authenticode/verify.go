package authenticode

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Errors that Verify's refusals wrap, for errors.Is; malformed headers
// wrap ErrNotPE.
var (
	ErrNotSigned    = errors.New("not signed")
	ErrUntrusted    = errors.New("not trusted by db")
	ErrForbidden    = errors.New("forbidden by dbx")
	ErrBadSignature = errors.New("bad signature")
)

// refusal is an error whose text is its own and which wraps one of the
// errors above.
type refusal struct {
	kind error
	msg  string
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.kind }

func refuse(kind error, format string, a ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// refusals are the reasons each signature of an image was not enough.
type refusals []error

func (r refusals) Error() string {
	s := make([]string, len(r))
	for i, err := range r {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (r refusals) Unwrap() []error { return r }

// Result says why Verify accepts an image.
type Result struct {
	Digest []byte // the image's Authenticode SHA-256
	// Signer signed the image and chains to Trusted, a certificate of db;
	// both are nil when the image is accepted because db holds its hash.
	Signer  *x509.Certificate
	Trusted *x509.Certificate
	ByHash  bool
}

// Certificate table entries (WIN_CERTIFICATE): dwLength u32 (the entry
// with this header, before padding to 8 bytes), wRevision u16 (not
// checked, as EDK2 does not), wCertificateType u16, then the data; a
// WIN_CERT_TYPE_EFI_GUID entry's data is a type GUID and, when it is
// EFI_CERT_TYPE_PKCS7_GUID, the signature.
const (
	winCertHeader = 8
	winCertPKCS   = 0x0002
	winCertGUID   = 0x0ef1
)

var certTypePKCS7 = mustGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")

// Verify decides as EDK2's DxeImageVerificationHandler whether firmware
// whose signature databases hold db and dbx (either may be nil: empty)
// starts the image of size bytes that r holds under Secure Boot, and
// returns why it does or an error saying why not. It holds the headers
// and the certificate table in memory, refusing a table over 1 MiB, and
// streams the rest of the image through the hash.
//
// An unsigned image is started when db holds its SHA-256 and dbx does not.
// For a signed image each PKCS#7 signature of its certificate table is
// checked in turn: the image is refused at once when a valid signature
// chains to a certificate of dbx, when a certificate of a signer's chain
// has its TBS hash in dbx, or when dbx holds the image's hash; it is
// started when some valid signature chains to a certificate of db or db
// holds the image's hash. A valid signature carries the image's digest,
// its messageDigest attribute is the hash of the SpcIndirectDataContent
// it signs, and its signature verifies with the signer's key. A chain
// runs from the signer through the certificates the signature carries; it
// reaches a certificate of db when it holds that certificate or one that
// certificate issued.
func Verify(r io.ReaderAt, size int64, db, dbx *Database) (*Result, error) {
	p, err := parsePE(r, size)
	if err != nil {
		return nil, err
	}
	sum, err := p.hash(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	res := &Result{Digest: sum}
	if !p.hasCertDir || p.certSize == 0 {
		switch {
		case dbx.holds(CertSHA256, sum):
			return nil, refuse(ErrForbidden, "image hash %x is in dbx", sum)
		case db.holds(CertSHA256, sum):
			res.ByHash = true
			return res, nil
		}
		return nil, refuse(ErrNotSigned, "not signed, and db does not hold its hash %x", sum)
	}
	sigs, err := p.signatures()
	if err != nil {
		return nil, err
	}
	if len(sigs) == 0 {
		return nil, refuse(ErrNotSigned, "not signed: the certificate table holds no PKCS#7 signature")
	}
	digests := map[crypto.Hash][]byte{crypto.SHA256: sum}
	accepted := false
	var why refusals
	for i, der := range sigs {
		at := func(err error) error {
			if len(sigs) > 1 {
				return fmt.Errorf("signature %d: %w", i+1, err)
			}
			return err
		}
		fail := func(err error) { why = append(why, at(err)) }
		s, err := parseSignedData(der)
		if err != nil {
			fail(refuse(ErrBadSignature, "%v", err))
			continue
		}
		alg := hashes[s.digestAlg]
		digest := digests[alg.hash]
		if digest == nil {
			if digest, err = p.hash(alg.hash); err != nil {
				return nil, err
			}
			digests[alg.hash] = digest
		}
		signer, err := s.check(digest)
		chain := s.chain(signer)
		if bad := forbidden(chain, dbx, err == nil); bad != nil {
			return nil, at(refuse(ErrForbidden, "dbx revokes %s, in the chain of signer %s", bad.Subject, signer.Subject))
		}
		switch {
		case err != nil:
			fail(err)
		case accepted: // one signature that db trusts is enough
		default:
			// EDK2 stops at the first certificate of db that the
			// signature chains to, even when dbx revokes it.
			switch c := trusted(chain, db.Certificates()); {
			case c == nil:
				fail(refuse(ErrUntrusted, "signed by a key that db does not hold (signer %s)", signer.Subject))
			case revoked(c, dbx):
				fail(refuse(ErrForbidden, "dbx revokes %s of db, which signer %s chains to", c.Subject, signer.Subject))
			default:
				accepted, res.Signer, res.Trusted = true, signer, c
			}
		}
		if dbx.holds(alg.typ, digest) {
			return nil, refuse(ErrForbidden, "image hash %x is in dbx", digest)
		}
		if !accepted && db.holds(alg.typ, digest) {
			accepted, res.ByHash = true, true
		}
	}
	if accepted {
		return res, nil
	}
	if len(why) == 1 {
		return nil, why[0]
	}
	return nil, why
}

// signatures reads the certificate table and returns its PKCS#7
// signatures, refusing a table larger than maxCertTable or whose entries
// do not end where it ends.
func (p *peImage) signatures() ([][]byte, error) {
	if end := int64(p.certOff) + int64(p.certSize); end > p.size {
		return nil, refuse(ErrBadSignature, "the certificate table [%#x, %#x) lies past the end of the file (%d bytes)", p.certOff, end, p.size)
	}
	if p.certSize > maxCertTable {
		return nil, refuse(ErrBadSignature, "the certificate table of %d bytes is larger than the %d bytes (1 MiB) Verify reads", p.certSize, maxCertTable)
	}
	b, err := readAt(p.r, int64(p.certOff), int(p.certSize))
	if err != nil {
		return nil, err
	}
	// Offsets within the table from here on.
	off, end := uint64(0), uint64(p.certSize)
	var sigs [][]byte
	for off < end && end-off > winCertHeader {
		n := uint64(binary.LittleEndian.Uint32(b[off:]))
		typ := binary.LittleEndian.Uint16(b[off+6:])
		// EDK2 stops at an entry too short for its type.
		if n > end-off || n < winCertHeader || typ == winCertPKCS && n == winCertHeader ||
			typ == winCertGUID && n <= winCertHeader+16 {
			break
		}
		e := b[off+winCertHeader : off+n]
		if typ == winCertPKCS {
			sigs = append(sigs, e)
		} else if typ == winCertGUID && GUID(e[:16]) == certTypePKCS7 {
			sigs = append(sigs, e[16:])
		}
		off += (n + 7) &^ 7
	}
	if off != end {
		return nil, refuse(ErrBadSignature, "the certificate table is corrupt: its entries end at %#x, not at %#x",
			uint64(p.certOff)+off, uint64(p.certOff)+end)
	}
	return sigs, nil
}

// check verifies the signature of the image whose digest (by the
// signature's algorithm) is digest. It returns the signer's certificate
// when the signature carries it, also when the signature is not valid.
func (s *signedData) check(digest []byte) (*x509.Certificate, error) {
	signer, err := s.verifySigner()
	if !bytes.Equal(s.digest, digest) {
		return signer, refuse(ErrBadSignature, "signed digest does not match the image (signed %x, image %x)", s.digest, digest)
	}
	if err != nil {
		return signer, refuse(ErrBadSignature, "%v", err)
	}
	return signer, nil
}

// maxChain bounds a chain, which bounds the signature checks that a
// signature carrying many certificates of one name can cost.
const maxChain = 16

// chain returns the certificate chain of signer (none when nil): the
// signer, its issuer among the certificates s carries, that one's issuer,
// and so on.
func (s *signedData) chain(signer *x509.Certificate) []*x509.Certificate {
	if signer == nil {
		return nil
	}
	chain := []*x509.Certificate{signer}
	for c := signer; len(chain) <= len(s.certs) && len(chain) < maxChain; {
		var next *x509.Certificate
		for _, cand := range s.certs {
			if cand != c && issued(cand, c) {
				next = cand
				break
			}
		}
		if next == nil {
			break
		}
		chain = append(chain, next)
		c = next
	}
	return chain
}

// trusted returns the first of anchors that the chain reaches: one of its
// certificates, or the issuer of one. So does OpenSSL's PKCS7_verify for
// EDK2, given a store of one certificate and X509_V_FLAG_PARTIAL_CHAIN.
func trusted(chain, anchors []*x509.Certificate) *x509.Certificate {
	for _, a := range anchors {
		for _, c := range chain {
			if bytes.Equal(c.Raw, a.Raw) || issued(a, c) {
				return a
			}
		}
	}
	return nil
}

// forbidden returns a certificate of the chain that dbx revokes, or, for
// a valid signature, a certificate of dbx that the chain reaches (EDK2's
// AuthenticodeVerify against each certificate of dbx).
func forbidden(chain []*x509.Certificate, dbx *Database, valid bool) *x509.Certificate {
	for _, c := range chain {
		if revoked(c, dbx) {
			return c
		}
	}
	if valid {
		return trusted(chain, dbx.Certificates())
	}
	return nil
}

// revoked tells whether dbx holds the hash of c's TBSCertificate. The
// revocation time beside it is not read: EDK2 lets an image through only
// with a timestamp from before it, and timestamps are not read here.
func revoked(c *x509.Certificate, dbx *Database) bool {
	s256, s384, s512 := sha256.Sum256(c.RawTBSCertificate), sha512.Sum384(c.RawTBSCertificate), sha512.Sum512(c.RawTBSCertificate)
	return dbx.holds(CertX509SHA256, s256[:]) || dbx.holds(CertX509SHA384, s384[:]) || dbx.holds(CertX509SHA512, s512[:])
}

// issued tells whether parent issued child: parent's subject is child's
// issuer, parent may sign certificates (OpenSSL's X509_check_ca) and its
// key verifies child's signature (SHA-1 too, as OpenSSL does).
func issued(parent, child *x509.Certificate) bool {
	return bytes.Equal(child.RawIssuer, parent.RawSubject) && isCA(parent) &&
		parent.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature) == nil
}

func isCA(c *x509.Certificate) bool {
	switch {
	case c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0:
		return false
	case c.BasicConstraintsValid:
		return c.IsCA
	case c.KeyUsage != 0:
		return true
	}
	// A version 1 certificate that signed itself: a root of old.
	return c.Version == 1 && bytes.Equal(c.RawIssuer, c.RawSubject) &&
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}
