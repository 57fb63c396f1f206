package authenticode

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidSignedData      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidSpcIndirectData = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidMessageDigest   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
)

// hashes are the digest algorithms EDK2 hashes images with.
var hashes = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
	typ  GUID // the db/dbx type of an image hash
}{
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1, CertSHA1},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256, CertSHA256},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384, CertSHA384},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512, CertSHA512},
}

// signedData is what verification reads of an Authenticode signature: a
// PKCS#7 ContentInfo holding SignedData whose content is
// SpcIndirectDataContent.
type signedData struct {
	// content is the contents octets of the SpcIndirectDataContent
	// SEQUENCE, without its tag and length: what the messageDigest
	// attribute is the hash of (as EDK2's AuthenticodeVerify passes it to
	// PKCS7_verify, and as sbsign and signtool compute it).
	content   []byte
	digestAlg int    // index in hashes of the image digest's algorithm
	digest    []byte // the image digest the signature carries
	certs     []*x509.Certificate
	signer    signerInfo
}

type signerInfo struct {
	issuer []byte // raw DER Name
	serial *big.Int
	hash   crypto.Hash
	attrs  []byte // authenticated attributes as DER SET OF, nil when absent
	digest []byte // their messageDigest
	sig    []byte
}

var (
	tagCtx0 = cbasn1.Tag(0).Constructed().ContextSpecific()
	tagCtx1 = cbasn1.Tag(1).Constructed().ContextSpecific()
)

// parseSignedData reads a DER PKCS#7 signature; bytes after it (padding
// inside dwLength) are ignored, as d2i_PKCS7 ignores them.
func parseSignedData(der []byte) (*signedData, error) {
	in := cryptobyte.String(der)
	var ci, wrap, sd, algs, cinfo, explicit, spc, certs, infos cryptobyte.String
	var oid asn1.ObjectIdentifier
	var version int
	var hasCerts bool
	if !in.ReadASN1(&ci, cbasn1.SEQUENCE) || !ci.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSignedData) ||
		!ci.ReadASN1(&wrap, tagCtx0) || !wrap.ReadASN1(&sd, cbasn1.SEQUENCE) {
		return nil, errors.New("not a DER PKCS#7 SignedData")
	}
	if !sd.ReadASN1Integer(&version) || !sd.ReadASN1(&algs, cbasn1.SET) || !sd.ReadASN1(&cinfo, cbasn1.SEQUENCE) ||
		!cinfo.ReadASN1ObjectIdentifier(&oid) {
		return nil, errors.New("malformed PKCS#7 SignedData")
	}
	if !oid.Equal(oidSpcIndirectData) {
		return nil, fmt.Errorf("PKCS#7 content is %v, not SpcIndirectDataContent", oid)
	}
	if !cinfo.ReadASN1(&explicit, tagCtx0) || !explicit.ReadASN1(&spc, cbasn1.SEQUENCE) {
		return nil, errors.New("malformed SpcIndirectDataContent")
	}
	s := &signedData{content: bytes.Clone(spc)}
	var info, alg cryptobyte.String
	if !spc.SkipASN1(cbasn1.SEQUENCE) || !spc.ReadASN1(&info, cbasn1.SEQUENCE) || !info.ReadASN1(&alg, cbasn1.SEQUENCE) ||
		!alg.ReadASN1ObjectIdentifier(&oid) || !info.ReadASN1Bytes(&s.digest, cbasn1.OCTET_STRING) {
		return nil, errors.New("malformed SpcIndirectDataContent")
	}
	s.digestAlg = -1
	for i, h := range hashes {
		if oid.Equal(h.oid) {
			s.digestAlg = i
		}
	}
	if s.digestAlg < 0 {
		return nil, fmt.Errorf("unsupported image digest algorithm %v", oid)
	}
	s.digest = bytes.Clone(s.digest)
	if !sd.ReadOptionalASN1(&certs, &hasCerts, tagCtx0) || !sd.SkipOptionalASN1(tagCtx1) || !sd.ReadASN1(&infos, cbasn1.SET) {
		return nil, errors.New("malformed PKCS#7 SignedData")
	}
	for !certs.Empty() {
		var c cryptobyte.String
		var tag cbasn1.Tag
		if !certs.ReadAnyASN1Element(&c, &tag) {
			return nil, errors.New("malformed PKCS#7 certificates")
		}
		if tag != cbasn1.SEQUENCE {
			continue // an extended or attribute certificate
		}
		// A certificate Go does not parse cannot be a signer or link a
		// chain here; EDK2's OpenSSL may parse it.
		if cert, err := x509.ParseCertificate(c); err == nil {
			s.certs = append(s.certs, cert)
		}
	}
	// Authenticode has exactly one signer. EDK2 would check each of
	// several, but no signing tool makes them, and each costs a chain.
	var err error
	if s.signer, err = parseSignerInfo(&infos); err != nil {
		return nil, err
	}
	if !infos.Empty() {
		return nil, errors.New("PKCS#7 SignedData has more than one signer")
	}
	return s, nil
}

func parseSignerInfo(in *cryptobyte.String) (signerInfo, error) {
	var si signerInfo
	var seq, ias, issuer, alg, elem, attrs cryptobyte.String
	var version int
	var oid asn1.ObjectIdentifier
	si.serial = new(big.Int)
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1Integer(&version) || !seq.ReadASN1(&ias, cbasn1.SEQUENCE) ||
		!ias.ReadASN1Element(&issuer, cbasn1.SEQUENCE) || !ias.ReadASN1Integer(si.serial) ||
		!seq.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return si, errors.New("malformed PKCS#7 SignerInfo")
	}
	si.issuer = bytes.Clone(issuer)
	for _, h := range hashes {
		if oid.Equal(h.oid) {
			si.hash = h.hash
		}
	}
	if si.hash == 0 {
		return si, fmt.Errorf("unsupported signer digest algorithm %v", oid)
	}
	if seq.PeekASN1Tag(tagCtx0) {
		if !seq.ReadASN1Element(&elem, tagCtx0) {
			return si, errors.New("malformed PKCS#7 authenticated attributes")
		}
		// The signature covers them as a SET OF, not [0] IMPLICIT.
		si.attrs = bytes.Clone(elem)
		si.attrs[0] = 0x31
		if !elem.ReadASN1(&attrs, tagCtx0) {
			return si, errors.New("malformed PKCS#7 authenticated attributes")
		}
		for !attrs.Empty() {
			var attr, values cryptobyte.String
			if !attrs.ReadASN1(&attr, cbasn1.SEQUENCE) || !attr.ReadASN1ObjectIdentifier(&oid) || !attr.ReadASN1(&values, cbasn1.SET) {
				return si, errors.New("malformed PKCS#7 authenticated attribute")
			}
			if oid.Equal(oidMessageDigest) && si.digest == nil &&
				!values.ReadASN1Bytes(&si.digest, cbasn1.OCTET_STRING) {
				return si, errors.New("malformed PKCS#7 messageDigest")
			}
		}
		if si.digest == nil {
			return si, errors.New("PKCS#7 authenticated attributes lack messageDigest")
		}
		si.digest = bytes.Clone(si.digest)
	}
	if !seq.SkipASN1(cbasn1.SEQUENCE) || !seq.ReadASN1Bytes(&si.sig, cbasn1.OCTET_STRING) {
		return si, errors.New("malformed PKCS#7 SignerInfo")
	}
	si.sig = bytes.Clone(si.sig)
	return si, nil
}

// verifySigner checks the signer of s as PKCS7_signatureVerify does: the
// messageDigest attribute is the hash of the content, and the signature
// over the attributes (or, without them, over the content) verifies with
// the key of the certificate the signer names. It returns that
// certificate, also when the signature does not verify.
func (s *signedData) verifySigner() (*x509.Certificate, error) {
	si := s.signer
	var cert *x509.Certificate
	for _, c := range s.certs {
		if bytes.Equal(c.RawIssuer, si.issuer) && c.SerialNumber.Cmp(si.serial) == 0 {
			cert = c
			break
		}
	}
	if cert == nil {
		return nil, errors.New("the PKCS#7 signature does not carry its signer's certificate")
	}
	signed := s.content
	if si.attrs != nil {
		d := si.hash.New()
		d.Write(s.content)
		if !bytes.Equal(d.Sum(nil), si.digest) {
			return cert, fmt.Errorf("the messageDigest attribute does not match the signed content (signer %s)", cert.Subject)
		}
		signed = si.attrs
	}
	d := si.hash.New()
	d.Write(signed)
	sum := d.Sum(nil)
	switch pub := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(pub, si.hash, sum, si.sig); err != nil {
			return cert, fmt.Errorf("the signature by %s does not verify: %w", cert.Subject, err)
		}
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, sum, si.sig) {
			return cert, fmt.Errorf("the signature by %s does not verify", cert.Subject)
		}
	default:
		return cert, fmt.Errorf("the signer %s has an unsupported %v key", cert.Subject, cert.PublicKeyAlgorithm)
	}
	return cert, nil
}
