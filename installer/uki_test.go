package installer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/uki"
)

// TestBuildUKI builds a UKI from a kernel, an initramfs and a command line,
// unsigned and signed with sbsign, reads it back as prestage does, checks
// the signature with sbverify, and packs it in an installer image.
func TestBuildUKI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	snakeoilKey, snakeoilCert := boottest.Snakeoil(t, dir)
	k := boottest.FakeKernel(t, dir, "6.1.0-99-test", 300000)
	i := filepath.Join(dir, "initrd")
	os.WriteFile(i, []byte(strings.Repeat("initramfs ", 5000)), 0o644)
	for _, signed := range []bool{false, true} {
		o := UKIOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v7"}
		if signed {
			o.SignKey, o.SignCert = snakeoilKey, snakeoilCert
		}
		out := filepath.Join(dir, "uki.efi")
		if err := BuildUKI(ctx, out, o); err != nil {
			t.Fatalf("signed %v: %v", signed, err)
		}
		f, _ := os.Open(out)
		st, _ := f.Stat()
		u, err := boot.CheckUKI(f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := io.ReadAll(u.Kernel())
		want, _ := os.ReadFile(k)
		if string(kb) != string(want) || u.Cmdline != o.Cmdline || u.Version() != "v7" || u.Uname != "6.1.0-99-test" {
			t.Errorf("signed %v: kernel %d bytes, cmdline %q, version %q, uname %q", signed, len(kb), u.Cmdline, u.Version(), u.Uname)
		}
		f.Close()
		verify, err := exec.Command("sbverify", "--cert", snakeoilCert, out).CombinedOutput()
		if signed != (err == nil) {
			t.Errorf("signed %v: sbverify: %v: %s", signed, err, verify)
		}
		if !signed {
			continue
		}
		img, err := Build(BuildOptions{UKI: out, Version: "v7", Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		rc, _ := layers[0].Uncompressed()
		var names []string
		for tr := tar.NewReader(rc); ; {
			h, err := tr.Next()
			if err != nil {
				break
			}
			names = append(names, h.Name)
		}
		rc.Close()
		img.Close()
		if got := strings.Join(names, " "); !strings.Contains(got, "usr/install/amd64/vmlinuz.efi") || strings.Contains(got, "usr/install/amd64/vmlinuz ") {
			t.Errorf("layer holds %s", got)
		}
	}
	for _, tc := range []struct {
		o   UKIOptions
		msg string
	}{
		{UKIOptions{Kernel: k, Initramfs: i, SignKey: snakeoilKey}, "both a signing key"},
		{UKIOptions{Kernel: i, Initramfs: i}, "not a Linux kernel"},
		{UKIOptions{Kernel: k, Initramfs: i, Cmdline: "stagehand.slot=a"}, "serves either slot"},
		{UKIOptions{Kernel: k, Initramfs: i, Stub: i}, "not a PE/COFF"},
		{UKIOptions{Kernel: k, Initramfs: i, SignKey: i, SignCert: i}, "sbsign"},
	} {
		out := filepath.Join(t.TempDir(), "uki.efi")
		err := BuildUKI(ctx, out, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("BuildUKI(%+v) = %v, want %q", tc.o, err, tc.msg)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("BuildUKI(%+v) failed and left %s", tc.o, out)
		}
	}
	if _, err := Build(BuildOptions{UKI: k, Kernel: k, Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "either the UKI") {
		t.Errorf("Build with a UKI and a kernel: %v", err)
	}
}

// TestBuildUKIPCRSignature builds a UKI with a PCR private key (and signed
// for Secure Boot, as sbsign must keep the sections) and checks, without
// trusting systemd-measure: .pcrpkey is the key's PEM public key, and
// .pcrsig signs, for the phase before any systemd-pcrphase measurement,
// the PCR 11 policy systemd-stub 252 will meet when it boots this UKI,
// recomputed here from the UKI's own sections.
func TestBuildUKIPCRSignature(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	snakeoilKey, snakeoilCert := boottest.Snakeoil(t, dir)
	k := boottest.FakeKernel(t, dir, "6.1.0-99-test", 300000)
	i := filepath.Join(dir, "initrd")
	os.WriteFile(i, []byte(strings.Repeat("initramfs ", 5000)), 0o644)
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "pcr.key")
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)}), 0o600)
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	o := UKIOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v7",
		SignKey: snakeoilKey, SignCert: snakeoilCert, PCRPrivateKey: keyPath}
	out := filepath.Join(dir, "uki.efi")
	if err := BuildUKI(ctx, out, o); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("sbverify", "--cert", snakeoilCert, out).CombinedOutput(); err != nil {
		t.Errorf("sbverify: %v: %s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	u, err := uki.Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	section := func(name string) []byte {
		s, ok := u.File.Section(name)
		if !ok {
			return nil
		}
		b := make([]byte, s.Size())
		if _, err := f.ReadAt(b, s.Offset()); err != nil {
			t.Fatalf("reading %s: %v", name, err)
		}
		return b
	}
	if got := section(uki.SectionPCRPKey); !bytes.Equal(got, pubPEM) {
		t.Errorf(".pcrpkey is %q, want %q", got, pubPEM)
	}
	if u.Cmdline != o.Cmdline || u.Version() != "v7" || u.Uname != "6.1.0-99-test" {
		t.Errorf("cmdline %q, version %q, uname %q", u.Cmdline, u.Version(), u.Uname)
	}

	// PCR 11 as systemd-stub 252 extends it: each measured section present,
	// in its order, first its name with the NUL, then its contents.
	var pcr [32]byte
	extend := func(data []byte) {
		d := sha256.Sum256(data)
		pcr = sha256.Sum256(append(pcr[:], d[:]...))
	}
	var measured []string
	for _, name := range []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"} {
		if b := section(name); b != nil {
			extend(append([]byte(name), 0))
			extend(b)
			measured = append(measured, name)
		}
	}
	if want := []string{".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"}; !slices.Equal(measured, want) {
		t.Errorf("measured sections %v, want %v", measured, want)
	}
	// TPM2_PolicyPCR's digest from an empty policy: SHA256(zero digest ||
	// TPM_CC_PolicyPCR || TPML_PCR_SELECTION{sha256: PCR 11} || SHA256(PCR 11)).
	pcrDigest := sha256.Sum256(pcr[:])
	var pb bytes.Buffer
	pb.Write(make([]byte, 32))
	binary.Write(&pb, binary.BigEndian, uint32(0x17f))
	binary.Write(&pb, binary.BigEndian, uint32(1))
	binary.Write(&pb, binary.BigEndian, uint16(0x000b))
	pb.Write([]byte{3, 0x00, 0x08, 0x00})
	pb.Write(pcrDigest[:])
	wantPol := sha256.Sum256(pb.Bytes())

	raw := section(uki.SectionPCRSig)
	var sig struct {
		SHA256 []struct {
			PCRs []int  `json:"pcrs"`
			PKFP string `json:"pkfp"`
			Pol  string `json:"pol"`
			Sig  string `json:"sig"`
		} `json:"sha256"`
	}
	if err := json.Unmarshal(raw, &sig); err != nil {
		t.Fatalf(".pcrsig %q: %v", raw, err)
	}
	if len(sig.SHA256) != 5 {
		t.Fatalf(".pcrsig has %d sha256 entries, want 5 (one a phase): %s", len(sig.SHA256), raw)
	}
	// systemd 252's pkfp is the SHA256 of the key's PKCS#1 DER
	// (i2d_PublicKey), not of the PKIX one in .pcrpkey.
	fp := sha256.Sum256(x509.MarshalPKCS1PublicKey(&priv.PublicKey))
	pols := map[string]bool{}
	for n, e := range sig.SHA256 {
		pol, perr := hex.DecodeString(e.Pol)
		s, serr := base64.StdEncoding.DecodeString(e.Sig)
		if perr != nil || serr != nil || !slices.Equal(e.PCRs, []int{11}) || e.PKFP != hex.EncodeToString(fp[:]) {
			t.Errorf("entry %d: pcrs %v, pkfp %s (want %x), pol %v, sig %v", n, e.PCRs, e.PKFP, fp, perr, serr)
			continue
		}
		pols[e.Pol] = true
		h := sha256.Sum256(pol)
		if err := rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, h[:], s); err != nil {
			t.Errorf("entry %d: the signature of policy %s: %v", n, e.Pol, err)
		}
	}
	if len(pols) != 5 {
		t.Errorf("the 5 phases have %d distinct policies", len(pols))
	}
	if !pols[hex.EncodeToString(wantPol[:])] {
		t.Errorf("no entry signs the policy %x of PCR 11 = %x (before systemd-pcrphase); .pcrsig: %s", wantPol, pcr, raw)
	}

	// The same key in PKCS#8 gives the same sections: the policies and
	// their PKCS#1 v1.5 signatures are deterministic.
	p8, _ := x509.MarshalPKCS8PrivateKey(priv)
	os.WriteFile(keyPath+"8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600)
	out8 := filepath.Join(dir, "uki8.efi")
	if err := BuildUKI(ctx, out8, UKIOptions{Kernel: k, Initramfs: i, Cmdline: o.Cmdline, Version: o.Version, PCRPrivateKey: keyPath + "8"}); err != nil {
		t.Fatal(err)
	}
	b8, _ := os.ReadFile(out8)
	u8, err := uki.Open(bytes.NewReader(b8), int64(len(b8)))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{uki.SectionPCRPKey, uki.SectionPCRSig} {
		s, _ := u8.File.Section(name)
		if got := b8[s.Offset():][:s.Size()]; !bytes.Equal(got, section(name)) {
			t.Errorf("with the key in PKCS#8, %s is %q, want %q", name, got, section(name))
		}
	}

	// Every input is checked before out is written.
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPath := filepath.Join(dir, "ec.key")
	os.WriteFile(ecPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), 0o600)
	defer func(p string) { SystemdMeasure = p }(SystemdMeasure)
	for _, tc := range []struct {
		key, measure, msg string
	}{
		{i, SystemdMeasure, "not PEM"},
		{snakeoilCert, SystemdMeasure, "not an RSA private key"},
		{ecPath, SystemdMeasure, "not an RSA key"},
		{filepath.Join(dir, "nonexistent"), SystemdMeasure, "no such file"},
		{keyPath, filepath.Join(dir, "nonexistent"), "(Debian package systemd)"},
		{keyPath, "/bin/false", "false sign: exit status 1"},
	} {
		SystemdMeasure = tc.measure
		out := filepath.Join(t.TempDir(), "uki.efi")
		err := BuildUKI(ctx, out, UKIOptions{Kernel: k, Initramfs: i, PCRPrivateKey: tc.key})
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("BuildUKI with PCR key %s and %s = %v, want %q", tc.key, tc.measure, err, tc.msg)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("BuildUKI with PCR key %s and %s failed and left %s", tc.key, tc.measure, out)
		}
	}
}
