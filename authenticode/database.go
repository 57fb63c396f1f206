package authenticode

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// SecurityDatabaseVendor is the vendor GUID of the variables db and dbx
// (EFI_IMAGE_SECURITY_DATABASE_GUID).
const SecurityDatabaseVendor = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"

// A GUID is an EFI_GUID as it lies in memory: its first three fields
// little-endian, so that the bytes differ from those of the text form.
type GUID [16]byte

// ParseGUID reads the text form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(s) != 36 || len(h) != 16 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("%q is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", s)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(h[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(h[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(h[6:]))
	copy(g[8:], h[8:])
	return g, nil
}

func mustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the text form, in lower case.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// Signature types (UEFI specification, EFI_SIGNATURE_DATA). Verify reads
// these; lists of other types are kept and ignored.
var (
	CertX509   = mustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072") // a DER certificate
	CertSHA256 = mustGUID("c1c41626-504c-4092-aca9-41f936934328") // an image's Authenticode SHA-256
	CertSHA1   = mustGUID("826ca512-cf10-4ac9-b187-be01496631bd")
	CertSHA384 = mustGUID("ff3e5307-9fd0-48c9-85f1-8ad56c701e01")
	CertSHA512 = mustGUID("093e0fae-a6c4-4f50-9f1b-d41e2b89c19a")
	// The SHA-2 hash of a certificate's TBSCertificate and a revocation
	// time (16 bytes); in dbx it revokes the certificate.
	CertX509SHA256 = mustGUID("3bd2a492-96c0-4079-b420-fcf98ef103ed")
	CertX509SHA384 = mustGUID("7076876e-80c2-4ee6-aad2-28b349a6865b")
	CertX509SHA512 = mustGUID("446dbf63-2502-4cda-bcfa-2465d2b0fe9d")
)

// Database is the contents of a signature database variable (db, dbx): a
// sequence of EFI_SIGNATURE_LIST, each laid out as
//
//	offset  size  field
//	0       16    SignatureType (GUID)
//	16      4     SignatureListSize: the whole list, header included (LE)
//	20      4     SignatureHeaderSize (LE)
//	24      4     SignatureSize: each entry, owner GUID included (LE)
//	28      h     SignatureHeader
//	28+h    s×n   EFI_SIGNATURE_DATA: SignatureOwner (GUID), data [s-16]
type Database struct {
	Lists []SignatureList
}

// SignatureList is one EFI_SIGNATURE_LIST.
type SignatureList struct {
	Type       GUID
	Header     []byte
	Size       uint32 // SignatureSize: 16 + the length of each entry's data
	Signatures []Signature
}

// Signature is one EFI_SIGNATURE_DATA.
type Signature struct {
	Owner GUID
	Data  []byte
}

const listHeaderSize = 28

// dataSizes are the entry sizes the firmware accepts for the types of a
// fixed size (EDK2's mSupportSigItem), without the owner GUID.
var dataSizes = map[GUID]uint32{
	CertSHA1: 20, CertSHA256: 32, CertSHA384: 48, CertSHA512: 64,
	CertX509SHA256: 32 + 16, CertX509SHA384: 48 + 16, CertX509SHA512: 64 + 16,
}

// ParseSignatureDatabase parses the data of db or dbx without the 4 bytes
// of attributes that efivarfs puts before it (efivar.Store.Get strips
// them; see ParseEFIVarFile for a file read from efivarfs). Empty data is
// an empty database. The result does not alias b.
func ParseSignatureDatabase(b []byte) (*Database, error) {
	d := &Database{}
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < listHeaderSize {
			return nil, fmt.Errorf("signature list at %#x: %d bytes, less than its %d-byte header", off, len(rest), listHeaderSize)
		}
		var l SignatureList
		copy(l.Type[:], rest)
		size := binary.LittleEndian.Uint32(rest[16:])
		hsize := binary.LittleEndian.Uint32(rest[20:])
		l.Size = binary.LittleEndian.Uint32(rest[24:])
		if uint64(size) > uint64(len(rest)) || uint64(size) < listHeaderSize+uint64(hsize) {
			return nil, fmt.Errorf("signature list at %#x: size %d with a %d-byte header does not fit the %d bytes left", off, size, hsize, len(rest))
		}
		if l.Size < 16 || (size-listHeaderSize-hsize)%l.Size != 0 {
			return nil, fmt.Errorf("signature list at %#x: entries of %d bytes do not divide %d bytes", off, l.Size, size-listHeaderSize-hsize)
		}
		if want, ok := dataSizes[l.Type]; ok && l.Size != 16+want {
			return nil, fmt.Errorf("signature list at %#x: type %v has entries of %d bytes, want %d", off, l.Type, l.Size, 16+want)
		}
		l.Header = bytes.Clone(rest[listHeaderSize : listHeaderSize+hsize])
		for e := rest[listHeaderSize+hsize : size]; len(e) > 0; e = e[l.Size:] {
			s := Signature{Data: bytes.Clone(e[16:l.Size])}
			copy(s.Owner[:], e)
			l.Signatures = append(l.Signatures, s)
		}
		d.Lists = append(d.Lists, l)
		off += int(size)
	}
	return d, nil
}

// ParseEFIVarFile parses db or dbx as a file in efivarfs holds it: 4 bytes
// of attributes, then the database.
func ParseEFIVarFile(b []byte) (*Database, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("efivarfs file of %d bytes lacks its 4 bytes of attributes", len(b))
	}
	return ParseSignatureDatabase(b[4:])
}

// Variables is what ReadDatabase needs of an efivar.Store: Get returns
// a variable's data without its attributes, and an error wrapping
// fs.ErrNotExist when it is unset.
type Variables interface {
	Get(name, vendor string) (attrs uint32, data []byte, err error)
}

// ReadDatabase reads the variable db or dbx (name) from s; an unset
// variable is an empty database.
func ReadDatabase(s Variables, name string) (*Database, error) {
	_, data, err := s.Get(name, SecurityDatabaseVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return &Database{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	d, err := ParseSignatureDatabase(data)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	return d, nil
}

// Marshal encodes d as ParseSignatureDatabase reads it.
func (d *Database) Marshal() ([]byte, error) {
	var b []byte
	for i, l := range d.Lists {
		if l.Size < 16 {
			return nil, fmt.Errorf("signature list %d: entry size %d is less than an owner GUID", i, l.Size)
		}
		size := listHeaderSize + uint64(len(l.Header)) + uint64(l.Size)*uint64(len(l.Signatures))
		if size > 1<<32-1 {
			return nil, fmt.Errorf("signature list %d: %d bytes, more than a list holds", i, size)
		}
		b = append(b, l.Type[:]...)
		b = binary.LittleEndian.AppendUint32(b, uint32(size))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(l.Header)))
		b = binary.LittleEndian.AppendUint32(b, l.Size)
		b = append(b, l.Header...)
		for j, s := range l.Signatures {
			if uint64(len(s.Data))+16 != uint64(l.Size) {
				return nil, fmt.Errorf("signature list %d, entry %d: %d bytes of data, want %d", i, j, len(s.Data), l.Size-16)
			}
			b = append(b, s.Owner[:]...)
			b = append(b, s.Data...)
		}
	}
	return b, nil
}

// Certificates returns the certificates of the EFI_CERT_X509 entries; an
// entry that does not parse is left out, as it verifies nothing in EDK2.
func (d *Database) Certificates() []*x509.Certificate {
	var certs []*x509.Certificate
	for _, s := range d.entries(CertX509) {
		if c, err := x509.ParseCertificate(s); err == nil {
			certs = append(certs, c)
		}
	}
	return certs
}

// entries returns the data of the entries of type t; d may be nil.
func (d *Database) entries(t GUID) [][]byte {
	if d == nil {
		return nil
	}
	var out [][]byte
	for _, l := range d.Lists {
		if l.Type == t {
			for _, s := range l.Signatures {
				out = append(out, s.Data)
			}
		}
	}
	return out
}

// holds tells whether d has an entry of type t whose data starts with
// prefix (the certificate-hash types carry a revocation time after it).
func (d *Database) holds(t GUID, prefix []byte) bool {
	for _, e := range d.entries(t) {
		if bytes.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}
