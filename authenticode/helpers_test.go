package authenticode

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Debian's systemd-boot and systemd-stub (systemd-boot-efi, installed by
// make deps): real images, the first one of a length that is not a
// multiple of 8, which sbsign pads before it signs.
var systemdImages = map[string]string{
	"systemd-boot": "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
	"systemd-stub": "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
}

// need fails the test when a tool is missing, saying how to install it.
func need(t testing.TB, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s is missing: run 'make deps' as root (apt-get install %s)", tool, pkg)
	}
}

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// keyPair is a key and its certificate, as files for sbsign and parsed.
type keyPair struct {
	key, cert string
	x509      *x509.Certificate
}

func readCert(t testing.TB, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM block", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// pki is the test's keys, made with openssl: db, a self-signed
// certificate as enrolled in db; ca, a root that issued inter, which
// issued leaf; other, a self-signed certificate nothing trusts; notCA, a
// self-signed certificate without the CA flag, which issued byNotCA.
type pki struct{ db, ca, inter, leaf, other, notCA, byNotCA keyPair }

const extensions = `[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=codeSigning
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
`

// pkiDir holds the keys that testPKI makes once for all tests.
var (
	pkiDir  string
	pkiOnce sync.Once
	shared  *pki
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pkiDir != "" {
		os.RemoveAll(pkiDir)
	}
	os.Exit(code)
}

// testPKI returns the keys, made on the first call.
func testPKI(t testing.TB) *pki {
	t.Helper()
	pkiOnce.Do(func() {
		dir, err := os.MkdirTemp("", "authenticode-pki-")
		if err != nil {
			t.Fatal(err)
		}
		pkiDir = dir
		shared = newPKI(t, dir)
	})
	if shared == nil {
		t.Fatal("making the test keys failed in an earlier test")
	}
	return shared
}

func newPKI(t testing.TB, dir string) *pki {
	t.Helper()
	need(t, "openssl", "openssl")
	ext := filepath.Join(dir, "ext.cnf")
	if err := os.WriteFile(ext, []byte(extensions), 0o600); err != nil {
		t.Fatal(err)
	}
	pair := func(name string) keyPair {
		return keyPair{key: filepath.Join(dir, name+".key"), cert: filepath.Join(dir, name+".pem")}
	}
	selfSigned := func(name, cn string) keyPair {
		k := pair(name)
		run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", k.key, "-out", k.cert,
			"-days", "30", "-subj", "/CN="+cn)
		k.x509 = readCert(t, k.cert)
		return k
	}
	// issue makes a certificate with the extensions of section, issued
	// by by or, when by has no key, by itself.
	issue := func(name, cn string, by keyPair, section string) keyPair {
		k := pair(name)
		csr := filepath.Join(dir, name+".csr")
		run(t, "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", k.key, "-out", csr, "-subj", "/CN="+cn)
		args := []string{"x509", "-req", "-in", csr, "-set_serial", "7", "-days", "30", "-extfile", ext, "-extensions", section, "-out", k.cert}
		if by.key == "" {
			args = append(args, "-signkey", k.key)
		} else {
			args = append(args, "-CA", by.cert, "-CAkey", by.key)
		}
		run(t, "openssl", args...)
		k.x509 = readCert(t, k.cert)
		return k
	}
	p := &pki{db: selfSigned("db", "stagehand test db"), ca: selfSigned("ca", "stagehand test CA"),
		other: selfSigned("other", "stagehand test other")}
	p.inter = issue("inter", "stagehand test intermediate", p.ca, "ca")
	p.leaf = issue("leaf", "stagehand test leaf", p.inter, "leaf")
	p.notCA = issue("notca", "stagehand test not a CA", keyPair{}, "leaf")
	p.byNotCA = issue("bynotca", "stagehand test leaf of not a CA", p.notCA, "leaf")
	return p
}

// sbsign signs image with k, adding the certificates of addcert.
func sbsign(t testing.TB, k keyPair, image []byte, addcert ...keyPair) []byte {
	t.Helper()
	need(t, "sbsign", "sbsigntool")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.efi"), filepath.Join(dir, "out.efi")
	if err := os.WriteFile(in, image, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--key", k.key, "--cert", k.cert, "--output", out}
	if len(addcert) > 0 {
		var pems []byte
		for _, a := range addcert {
			b, err := os.ReadFile(a.cert)
			if err != nil {
				t.Fatal(err)
			}
			pems = append(pems, b...)
		}
		chain := filepath.Join(dir, "chain.pem")
		if err := os.WriteFile(chain, pems, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--addcert", chain)
	}
	run(t, "sbsign", append(args, in)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sbverify tells whether sbverify accepts image as signed by cert.
func sbverify(t testing.TB, cert string, image []byte) bool {
	t.Helper()
	need(t, "sbverify", "sbsigntool")
	f := filepath.Join(t.TempDir(), "image.efi")
	if err := os.WriteFile(f, image, 0o600); err != nil {
		t.Fatal(err)
	}
	return exec.Command("sbverify", "--cert", cert, f).Run() == nil
}

func readFile(t testing.TB, name, pkg string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("%v (Debian package %s: run 'make deps' as root)", err, pkg)
	}
	return b
}

// tinyPE is a minimal EFI application made by hand, PE32+ or PE32:
// headers of 0x400 bytes, .text and .data sections whose table order is
// not their file order, and 0x40 bytes after the last section (which the
// Authenticode hash covers as trailing data). 0xa40 bytes, a multiple of
// 8, so that sbsign does not pad it.
func tinyPE(pe32 bool) []byte {
	b := make([]byte, 0xa40)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x40)
	copy(b[0x40:], "PE\x00\x00")
	coff := b[0x44:]
	optSize, magic, dirs, machine := 240, magicPE32Plus, 112, 0x8664
	if pe32 {
		optSize, magic, dirs, machine = 224, magicPE32, 96, 0x14c
	}
	binary.LittleEndian.PutUint16(coff[0:], uint16(machine))
	binary.LittleEndian.PutUint16(coff[2:], 2)
	binary.LittleEndian.PutUint16(coff[16:], uint16(optSize))
	binary.LittleEndian.PutUint16(coff[18:], 0x206)
	opt := b[0x58:]
	binary.LittleEndian.PutUint16(opt[0:], uint16(magic))
	binary.LittleEndian.PutUint32(opt[16:], 0x1000) // entry point
	binary.LittleEndian.PutUint32(opt[32:], 0x1000) // SectionAlignment
	binary.LittleEndian.PutUint32(opt[36:], 0x200)  // FileAlignment
	binary.LittleEndian.PutUint32(opt[56:], 0x3000) // SizeOfImage
	binary.LittleEndian.PutUint32(opt[60:], 0x400)  // SizeOfHeaders
	binary.LittleEndian.PutUint16(opt[68:], 10)     // EFI application
	binary.LittleEndian.PutUint32(opt[dirs-4:], 16)
	sec := b[0x58+optSize:]
	for i, s := range []struct {
		name          string
		va, raw, size uint32
	}{{".data", 0x2000, 0x800, 0x200}, {".text", 0x1000, 0x400, 0x400}} {
		h := sec[i*sectionSize:]
		copy(h, s.name)
		binary.LittleEndian.PutUint32(h[8:], s.size)
		binary.LittleEndian.PutUint32(h[12:], s.va)
		binary.LittleEndian.PutUint32(h[16:], s.size)
		binary.LittleEndian.PutUint32(h[20:], s.raw)
		binary.LittleEndian.PutUint32(h[36:], 0x60000020)
	}
	copy(b[0x400:], "\xc3 tiny code")
	copy(b[0x800:], "tiny data")
	copy(b[0xa00:], "trailing data after the last section")
	return b
}

// images are the unsigned images the tests sign.
func images(t testing.TB) map[string][]byte {
	t.Helper()
	m := map[string][]byte{"tiny PE32+": tinyPE(false), "tiny PE32": tinyPE(true)}
	for name, file := range systemdImages {
		m[name] = readFile(t, file, "systemd-boot-efi")
	}
	return m
}

// database builds a database as ParseSignatureDatabase reads it: a list
// for each certificate, one for the hashes.
func database(t testing.TB, certs []*x509.Certificate, hashes ...[]byte) *Database {
	t.Helper()
	owner := mustGUID("5eb5bd6e-2a86-4a26-9f1f-0d7d6e3e0a11")
	d := &Database{}
	for _, c := range certs {
		d.Lists = append(d.Lists, SignatureList{Type: CertX509, Size: uint32(16 + len(c.Raw)),
			Signatures: []Signature{{Owner: owner, Data: c.Raw}}})
	}
	if len(hashes) > 0 {
		l := SignatureList{Type: CertSHA256, Size: 16 + 32}
		for _, h := range hashes {
			l.Signatures = append(l.Signatures, Signature{Owner: owner, Data: h})
		}
		d.Lists = append(d.Lists, l)
	}
	b, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSignatureDatabase(b)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

// hashBytes, verifyBytes and parseBytes are Hash, Verify and parsePE of
// an image in memory.
func hashBytes(image []byte) ([]byte, error) {
	return Hash(bytes.NewReader(image), int64(len(image)))
}

func verifyBytes(image []byte, db, dbx *Database) (*Result, error) {
	return Verify(bytes.NewReader(image), int64(len(image)), db, dbx)
}

func parseBytes(image []byte) (*peImage, error) {
	return parsePE(bytes.NewReader(image), int64(len(image)))
}

// mustParse is parseBytes, failing the test on an error.
func mustParse(t testing.TB, image []byte) *peImage {
	t.Helper()
	p, err := parseBytes(image)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// certTable returns the bytes of image's certificate table.
func certTable(t testing.TB, image []byte) []byte {
	t.Helper()
	p := mustParse(t, image)
	return image[p.certOff : p.certOff+p.certSize]
}

// firstSection returns the file offset of image's first section data.
func firstSection(t testing.TB, image []byte) int {
	t.Helper()
	p, err := parseBytes(image)
	if err != nil || len(p.sections) == 0 {
		t.Fatalf("no sections: %v", err)
	}
	return int(p.sections[0][0])
}

func mustHash(t testing.TB, image []byte) []byte {
	t.Helper()
	h, err := hashBytes(image)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// replace replaces the only occurrence of old in b, in place.
func replace(t testing.TB, b, old, new []byte) {
	t.Helper()
	if bytes.Count(b, old) != 1 {
		t.Fatalf("%x occurs %d times, want once", old, bytes.Count(b, old))
	}
	copy(b[bytes.Index(b, old):], new)
}

// addSignature appends the certificate table of from, an image signed
// from the same unsigned image, to that of signed: two WIN_CERTIFICATE
// entries, as signtool writes for a second signature.
func addSignature(t testing.TB, signed, from []byte) []byte {
	t.Helper()
	p := mustParse(t, signed)
	if int(p.certOff+p.certSize) != len(signed) {
		t.Fatal("the certificate table does not end the file")
	}
	out := append(bytes.Clone(signed), certTable(t, from)...)
	binary.LittleEndian.PutUint32(out[p.certDir+4:], uint32(len(out))-p.certOff)
	return out
}
