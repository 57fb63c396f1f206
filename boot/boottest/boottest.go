// Package boottest makes inputs for tests of the boot flow: kernels that
// look like bzImages to boot.KernelRelease, without being bootable, and unified
// kernel images built from the real systemd-stub.
package boottest

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/uki"
)

// FakeKernel writes a file with a bzImage setup header naming release,
// padded to size bytes, and returns its path.
func FakeKernel(t testing.TB, dir, release string, size int) string {
	t.Helper()
	b := make([]byte, size)
	for i := 0x1000; i < size; i++ {
		b[i] = byte(i*7 + len(release))
	}
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x200)
	copy(b[0x400:], release+" (test@stagehand) #1 SMP\x00")
	p := filepath.Join(dir, "vmlinuz-"+release)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// SystemdStub is Debian's systemd-stub (systemd-boot-efi, installed by
// make deps), which UKIs are built from.
const SystemdStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// UKI builds a unified kernel image from the real systemd-stub with the
// given kernel, initramfs, command line and version (in .osrel), and
// returns its bytes.
func UKI(t testing.TB, kernel, initramfs []byte, cmdline, version string) []byte {
	t.Helper()
	stub, err := os.ReadFile(SystemdStub)
	if err != nil {
		t.Fatalf("%v (Debian package systemd-boot-efi: run make deps)", err)
	}
	osrel := "ID=stagehand-test\nPRETTY_NAME=\"stagehand test " + version + "\"\nVERSION_ID=" + version + "\n"
	in := []uki.Input{{Name: uki.SectionOSRel, Data: strings.NewReader(osrel), Size: int64(len(osrel))}}
	if cmdline != "" {
		in = append(in, uki.Input{Name: uki.SectionCmdline, Data: strings.NewReader(cmdline), Size: int64(len(cmdline))})
	}
	if len(initramfs) > 0 {
		in = append(in, uki.Input{Name: uki.SectionInitrd, Data: bytes.NewReader(initramfs), Size: int64(len(initramfs))})
	}
	in = append(in, uki.Input{Name: uki.SectionLinux, Data: bytes.NewReader(kernel), Size: int64(len(kernel))})
	var out bytes.Buffer
	if err := uki.Build(&out, stub, in); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// The Secure Boot test key that Debian's ovmf enrolls (PK, KEK and db) in
// OVMF_VARS_4M.snakeoil.fd; the key is encrypted with the passphrase
// "snakeoil".
const (
	SnakeoilKey  = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	SnakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

// Snakeoil writes the snakeoil key without its passphrase into dir (as
// sbsign reads it) and returns it with the certificate.
func Snakeoil(t testing.TB, dir string) (key, cert string) {
	t.Helper()
	key = filepath.Join(dir, "snakeoil.key")
	if out, err := exec.Command("openssl", "pkey", "-in", SnakeoilKey, "-passin", "pass:snakeoil", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("decrypting %s (Debian package ovmf, run make deps): %v: %s", SnakeoilKey, err, out)
	}
	return key, SnakeoilCert
}
