package authenticode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/efivar"
)

func TestGUID(t *testing.T) {
	// EFI_CERT_X509_GUID as the UEFI specification declares it:
	// {0xa5c059a1, 0x94e4, 0x4aa7, {0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72}}.
	want := GUID{0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72}
	if CertX509 != want {
		t.Errorf("CertX509 is % x, want % x", CertX509[:], want[:])
	}
	if s := CertSHA256.String(); s != "c1c41626-504c-4092-aca9-41f936934328" {
		t.Errorf("CertSHA256.String() = %s", s)
	}
	for _, bad := range []string{"", "a5c059a1-94e4-4aa7-87b5-ab155c2bf07", "a5c059a1+94e4-4aa7-87b5-ab155c2bf072", "x5c059a1-94e4-4aa7-87b5-ab155c2bf072"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) succeeded", bad)
		}
	}
}

// list encodes an EFI_SIGNATURE_LIST by hand.
func list(typ GUID, size, hsize, sigSize uint32, body ...[]byte) []byte {
	b := append([]byte(nil), typ[:]...)
	b = binary.LittleEndian.AppendUint32(b, size)
	b = binary.LittleEndian.AppendUint32(b, hsize)
	b = binary.LittleEndian.AppendUint32(b, sigSize)
	for _, p := range body {
		b = append(b, p...)
	}
	return b
}

func TestParseSignatureDatabase(t *testing.T) {
	owner := mustGUID("77fa9abd-0359-4d32-bd60-28f4e78f784b")   // Microsoft's owner GUID
	unknown := mustGUID("0b6e5233-a65c-44c9-9407-d9ab83bfc8bd") // EFI_CERT_SHA224_GUID
	cert := bytes.Repeat([]byte{0x30}, 50)
	h1, h2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	x509List := list(CertX509, 28+16+50, 0, 16+50, owner[:], cert)
	tests := []struct {
		name    string
		in      []byte
		want    *Database
		wantErr string
	}{
		{name: "empty", in: nil, want: &Database{}},
		{name: "one certificate", in: x509List, want: &Database{Lists: []SignatureList{
			{Type: CertX509, Size: 66, Header: []byte{}, Signatures: []Signature{{Owner: owner, Data: cert}}}}}},
		{name: "certificate, hashes, an unknown type with a header and an empty list",
			in: bytes.Join([][]byte{
				x509List,
				list(CertSHA256, 28+2*48, 0, 48, owner[:], h1, owner[:], h2),
				list(unknown, 28+3+44, 3, 44, []byte("hdr"), owner[:], make([]byte, 28)),
				list(CertSHA256, 28, 0, 48),
			}, nil),
			want: &Database{Lists: []SignatureList{
				{Type: CertX509, Size: 66, Header: []byte{}, Signatures: []Signature{{Owner: owner, Data: cert}}},
				{Type: CertSHA256, Size: 48, Header: []byte{}, Signatures: []Signature{{Owner: owner, Data: h1}, {Owner: owner, Data: h2}}},
				{Type: unknown, Size: 44, Header: []byte("hdr"), Signatures: []Signature{{Owner: owner, Data: make([]byte, 28)}}},
				{Type: CertSHA256, Size: 48, Header: []byte{}},
			}}},
		{name: "short header", in: x509List[:27], wantErr: "less than its 28-byte header"},
		{name: "list longer than the data", in: x509List[:len(x509List)-1], wantErr: "does not fit"},
		{name: "list shorter than its header", in: list(CertX509, 30, 4, 16, make([]byte, 2)), wantErr: "does not fit"},
		{name: "entries of 0 bytes", in: list(CertX509, 28, 0, 0), wantErr: "do not divide"},
		{name: "entries that do not divide the list", in: list(CertX509, 28+20, 0, 16+3, make([]byte, 20)), wantErr: "do not divide"},
		{name: "SHA-256 entries of the wrong size", in: list(CertSHA256, 28+40, 0, 40, make([]byte, 40)), wantErr: "want 48"},
		{name: "a good list, then garbage", in: append(bytes.Clone(x509List), 1, 2, 3), wantErr: "signature list at 0x5e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSignatureDatabase(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSignatureDatabase: %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSignatureDatabase: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseSignatureDatabase (-want, +got):\n%s", diff)
			}
			b, err := got.Marshal()
			if err != nil || !bytes.Equal(b, tt.in) {
				t.Errorf("Marshal: %x, %v; want the input %x", b, err, tt.in)
			}
		})
	}
}

func TestMarshalRefuses(t *testing.T) {
	for name, d := range map[string]*Database{
		"entry size under 16": {Lists: []SignatureList{{Type: CertX509, Size: 8}}},
		"entry of another size": {Lists: []SignatureList{{Type: CertSHA256, Size: 48,
			Signatures: []Signature{{Data: make([]byte, 32)}, {Data: make([]byte, 31)}}}}},
	} {
		if _, err := d.Marshal(); err == nil {
			t.Errorf("%s: Marshal succeeded", name)
		}
	}
}

func TestReadDatabase(t *testing.T) {
	dir := efivar.Dir(t.TempDir())
	db := &Database{Lists: []SignatureList{{Type: CertSHA256, Size: 48, Header: []byte{},
		Signatures: []Signature{{Data: bytes.Repeat([]byte{7}, 32)}}}}}
	b, err := db.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Set("db", SecurityDatabaseVendor, efivar.NonVolatile|efivar.BootServiceAccess|efivar.RuntimeAccess|0x20, b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadDatabase(dir, "db")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(db, got); diff != "" {
		t.Errorf("ReadDatabase (-want, +got):\n%s", diff)
	}
	file, err := os.ReadFile(string(dir) + "/db-" + SecurityDatabaseVendor)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseEFIVarFile(file); err != nil || !cmp.Equal(db, got) {
		t.Errorf("ParseEFIVarFile: %v, %v", got, err)
	}
	if got, err := ReadDatabase(dir, "dbx"); err != nil || len(got.Lists) != 0 {
		t.Errorf("ReadDatabase of an unset dbx: %v, %v; want an empty database", got, err)
	}
	if err := dir.Set("dbx", SecurityDatabaseVendor, 0x27, []byte("short")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDatabase(dir, "dbx"); err == nil || !strings.Contains(err.Error(), "parsing dbx") {
		t.Errorf("ReadDatabase of a malformed dbx: %v", err)
	}
}

// ovmfVars is Debian's OVMF variable store with the snakeoil key enrolled
// in PK, KEK and db (ovmf, installed by make deps).
const ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"

// ovmfVariable returns the data of a variable of an OVMF variable store:
// a firmware volume (HeaderLength u16 at 48) holding a variable store
// header of 28 bytes, then variables at 4-byte alignment, each an
// AUTHENTICATED_VARIABLE_HEADER (StartId 0x55aa u16, State u8 at 2,
// NameSize u32 at 36, DataSize u32 at 40, VendorGuid at 44; 60 bytes),
// its UTF-16 name and its data. State 0x3f is a live variable.
func ovmfVariable(t testing.TB, fd []byte, name, vendor string) []byte {
	t.Helper()
	v := mustGUID(vendor)
	n := utf16.Encode([]rune(name + "\x00"))
	wantName := make([]byte, 2*len(n))
	for i, c := range n {
		binary.LittleEndian.PutUint16(wantName[2*i:], c)
	}
	off := int(binary.LittleEndian.Uint16(fd[48:])) + 28
	for off+60 <= len(fd) && binary.LittleEndian.Uint16(fd[off:]) == 0x55aa {
		nsize, dsize := int(binary.LittleEndian.Uint32(fd[off+36:])), int(binary.LittleEndian.Uint32(fd[off+40:]))
		if off+60+nsize+dsize > len(fd) {
			break
		}
		if fd[off+2] == 0x3f && GUID(fd[off+44:off+60]) == v && bytes.Equal(fd[off+60:off+60+nsize], wantName) {
			return fd[off+60+nsize : off+60+nsize+dsize]
		}
		off = (off + 60 + nsize + dsize + 3) &^ 3
	}
	t.Fatalf("%s holds no variable %s-%s", ovmfVars, name, vendor)
	return nil
}

// TestSnakeoilVars verifies against the db and dbx that Debian's OVMF
// enrolls: an image signed with the snakeoil key starts, one signed with
// another key does not.
func TestSnakeoilVars(t *testing.T) {
	fd := readFile(t, ovmfVars, "ovmf")
	db, err := ParseSignatureDatabase(ovmfVariable(t, fd, "db", SecurityDatabaseVendor))
	if err != nil {
		t.Fatalf("db: %v", err)
	}
	dbx, err := ParseSignatureDatabase(ovmfVariable(t, fd, "dbx", SecurityDatabaseVendor))
	if err != nil {
		t.Fatalf("dbx: %v", err)
	}
	snakeoil := readCert(t, boottest.SnakeoilCert)
	if c := db.Certificates(); len(c) != 1 || !c[0].Equal(snakeoil) {
		t.Fatalf("db holds %d certificates, want the snakeoil one", len(c))
	}
	key, cert := boottest.Snakeoil(t, t.TempDir())
	img := tinyPE(false)
	res, err := verifyBytes(sbsign(t, keyPair{key: key, cert: cert}, img), db, dbx)
	if err != nil {
		t.Fatalf("Verify of an image signed with the snakeoil key: %v", err)
	}
	if !res.Trusted.Equal(snakeoil) {
		t.Errorf("trusted through %v", res.Trusted.Subject)
	}
	p := testPKI(t)
	if _, err := verifyBytes(sbsign(t, p.db, img), db, dbx); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Verify of an image signed with another key: %v", err)
	}
	if _, err := verifyBytes(img, db, dbx); !errors.Is(err, ErrNotSigned) {
		t.Errorf("Verify of an unsigned image: %v", err)
	}
}
