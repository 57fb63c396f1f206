package installer

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/uki"
)

// SystemdStub is where Debian's systemd-boot-efi puts systemd-stub.
const SystemdStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// SystemdMeasure is where Debian's systemd (252) puts systemd-measure, which
// signs a UKI's PCR 11 policy; a variable so that a test can replace it.
var SystemdMeasure = "/usr/lib/systemd/systemd-measure"

// pcrPhases are the boot phases the PCR 11 policy is signed for: "" is
// PCR 11 right after systemd-stub measured the UKI, before any
// systemd-pcrphase measurement (what an initramfs that is not systemd,
// like prestage, sees); the others are systemd 252's defaults, for an OS
// whose initramfs and root run systemd-pcrphase.
var pcrPhases = []string{
	"",
	"enter-initrd",
	"enter-initrd:leave-initrd",
	"enter-initrd:leave-initrd:sysinit",
	"enter-initrd:leave-initrd:sysinit:ready",
}

// UKIOptions are the inputs of a unified kernel image.
type UKIOptions struct {
	Kernel    string // path of the kernel (bzImage)
	Initramfs string // path of the initramfs
	Cmdline   string // the kernel command line, embedded (no stagehand.slot=: a UKI serves either slot)
	Version   string // the OS version in .osrel; default: the kernel's release
	Stub      string // systemd-stub; default SystemdStub
	SignKey   string // with SignCert: sign the UKI with sbsign (Secure Boot)
	SignCert  string
	// PCRPrivateKey is a PEM RSA private key (PKCS#1 or PKCS#8): when set,
	// the UKI carries its public key (.pcrpkey) and the PCR 11 policies it
	// signed (.pcrsig), as ukify --pcr-private-key makes them, so that an OS
	// can seal secrets to every UKI signed by it (systemd-cryptenroll
	// --tpm2-public-key) rather than to one UKI's PCR values.
	PCRPrivateKey string
}

// BuildUKI writes the UKI to out: systemd-stub with .osrel (ID=stagehand,
// the version), .cmdline, .uname (the kernel's release), .initrd and
// .linux, each section page-aligned as ukify lays them out; with a PCR
// private key also .pcrpkey and .pcrsig (see pcrSections); signed with
// sbsign (Debian package sbsigntool) when a key and certificate are given.
// Every input is checked before out is written.
func BuildUKI(ctx context.Context, out string, o UKIOptions) error {
	if o.Stub == "" {
		o.Stub = SystemdStub
	}
	if (o.SignKey == "") != (o.SignCert == "") {
		return errors.New("UKI: give both a signing key and its certificate, or neither")
	}
	if strings.ContainsAny(o.Cmdline, "\r\n\x00") || strings.ContainsAny(o.Version, "\r\n\x00\"") {
		return fmt.Errorf("UKI: the command line %q or the version %q holds a line break, a NUL or a quote", o.Cmdline, o.Version)
	}
	stub, err := os.ReadFile(o.Stub)
	if err != nil {
		return fmt.Errorf("UKI: systemd-stub: %w (Debian package systemd-boot-efi)", err)
	}
	kf, err := os.Open(o.Kernel)
	if err != nil {
		return fmt.Errorf("UKI: kernel: %w", err)
	}
	defer kf.Close()
	release, err := boot.KernelRelease(kf)
	if err != nil {
		return fmt.Errorf("UKI: kernel %s: %w", o.Kernel, err)
	}
	inf, err := os.Open(o.Initramfs)
	if err != nil {
		return fmt.Errorf("UKI: initramfs: %w", err)
	}
	defer inf.Close()
	kst, err := kf.Stat()
	if err != nil {
		return err
	}
	ist, err := inf.Stat()
	if err != nil {
		return err
	}
	version := o.Version
	if version == "" {
		version = release
	}
	osrel := fmt.Sprintf("ID=stagehand\nNAME=stagehand\nPRETTY_NAME=\"stagehand %s\"\nVERSION_ID=%s\n", version, version)
	in := []uki.Input{{Name: uki.SectionOSRel, Data: strings.NewReader(osrel), Size: int64(len(osrel))}}
	if o.Cmdline != "" {
		in = append(in, uki.Input{Name: uki.SectionCmdline, Data: strings.NewReader(o.Cmdline), Size: int64(len(o.Cmdline))})
	}
	in = append(in, uki.Input{Name: uki.SectionUname, Data: strings.NewReader(release), Size: int64(len(release))})
	if o.SignKey != "" {
		if _, err := exec.LookPath("sbsign"); err != nil {
			return errors.New("UKI: signing needs sbsign, which is not installed (Debian package sbsigntool: apt-get install sbsigntool)")
		}
	}
	if o.PCRPrivateKey != "" {
		pkey, sig, err := pcrSections(ctx, o.PCRPrivateKey, o.Kernel, o.Initramfs, osrel, o.Cmdline)
		if err != nil {
			return err
		}
		in = append(in,
			uki.Input{Name: uki.SectionPCRPKey, Data: bytes.NewReader(pkey), Size: int64(len(pkey))},
			uki.Input{Name: uki.SectionPCRSig, Data: bytes.NewReader(sig), Size: int64(len(sig))})
	}
	in = append(in,
		uki.Input{Name: uki.SectionInitrd, Data: inf, Size: ist.Size()},
		uki.Input{Name: uki.SectionLinux, Data: kf, Size: kst.Size()})
	plain := out
	if o.SignKey != "" {
		plain = out + ".unsigned"
		defer os.Remove(plain)
	}
	f, err := os.Create(plain)
	if err != nil {
		return fmt.Errorf("UKI: %w", err)
	}
	err = uki.Build(f, stub, in)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = checkUKIFile(plain)
	}
	if err != nil {
		os.Remove(plain)
		return fmt.Errorf("UKI: %w", err)
	}
	if o.SignKey == "" {
		return nil
	}
	cmd := exec.CommandContext(ctx, "sbsign", "--key", o.SignKey, "--cert", o.SignCert, "--output", out, plain)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		return fmt.Errorf("UKI: sbsign --key %s --cert %s: %v: %s", o.SignKey, o.SignCert, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// checkUKIFile reads the UKI built at p back, as prestage will.
func checkUKIFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	_, err = boot.CheckUKI(f, st.Size())
	return err
}

// pcrSections returns the .pcrpkey and .pcrsig sections for the PEM RSA
// private key at keyPath: the PEM public key, and systemd-measure sign's
// JSON, which signs the PCR 11 value systemd-stub 252 computes from the
// UKI's measured sections (.linux, .osrel, .cmdline, .initrd, .pcrpkey:
// systemd-measure is given exactly the bytes that go into them; 252's stub
// measures neither .uname nor .pcrsig) for each of pcrPhases.
func pcrSections(ctx context.Context, keyPath, kernel, initramfs, osrel, cmdline string) (pkey, sig []byte, err error) {
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: PCR private key: %w", err)
	}
	key, err := parseRSAKey(b)
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: PCR private key %s: %w", keyPath, err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: PCR private key %s: %w", keyPath, err)
	}
	pkey = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	if _, err := os.Stat(SystemdMeasure); err != nil {
		return nil, nil, fmt.Errorf("UKI: signing the PCR policy needs %s, which is not installed (Debian package systemd)", SystemdMeasure)
	}
	dir, err := os.MkdirTemp("", "stagehand-pcr-*")
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: %w", err)
	}
	defer os.RemoveAll(dir)
	write := func(name string, data []byte) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, data, 0o600)
	}
	osrelPath, err := write("osrel", []byte(osrel))
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: %w", err)
	}
	pubPath, err := write("pcrpkey.pem", pkey)
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: %w", err)
	}
	args := []string{"sign", "--linux=" + kernel, "--osrel=" + osrelPath}
	if cmdline != "" {
		p, err := write("cmdline", []byte(cmdline))
		if err != nil {
			return nil, nil, fmt.Errorf("UKI: %w", err)
		}
		args = append(args, "--cmdline="+p)
	}
	args = append(args, "--initrd="+initramfs, "--pcrpkey="+pubPath, "--bank=sha256",
		"--private-key="+keyPath, "--public-key="+pubPath)
	for _, ph := range pcrPhases {
		args = append(args, "--phase="+ph)
	}
	args = append(args, "--json=short")
	env, stop, err := measureTPM(ctx, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("UKI: %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, SystemdMeasure, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	tpmErr := stop()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			// 252 logs a TPM2 library it cannot load only at debug level.
			msg = "no message; it loads the TPM2 libraries at run time (Debian packages libtss2-esys-3.0.2-0, libtss2-rc0, libtss2-mu0, and libtss2-tcti-swtpm0 for swtpm)"
		}
		if tpmErr != "" {
			msg += "; " + tpmErr
		}
		return nil, nil, fmt.Errorf("UKI: %s sign: %v: %s", SystemdMeasure, err, msg)
	}
	sig = bytes.TrimSpace(stdout.Bytes())
	if len(sig) == 0 || !json.Valid(sig) {
		return nil, nil, fmt.Errorf("UKI: %s sign printed no JSON: %q", SystemdMeasure, stdout.String())
	}
	return pkey, sig, nil
}

// parseRSAKey reads a PEM RSA private key, PKCS#1 or PKCS#8, as
// systemd-measure (OpenSSL) does; 252 signs PCR policies with RSA only.
func parseRSAKey(b []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("not PEM")
	}
	switch {
	case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "":
		return nil, errors.New("encrypted: give the key unencrypted")
	case !strings.HasSuffix(block.Type, "PRIVATE KEY"):
		return nil, fmt.Errorf("a PEM %s, not an RSA private key", block.Type)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not an RSA private key in PKCS#1 or PKCS#8")
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not an RSA key", k)
	}
	return rk, nil
}

// measureTPM gives systemd-measure a TPM: 252 computes each policy digest
// in a TPM trial session (later versions compute it in software), which
// uses no key and changes nothing. It is, in order: the one named by
// SYSTEMD_TPM2_DEVICE, a private swtpm (Debian package swtpm) run in dir
// until stop, else the machine's own /dev/tpmrm0. env is what to add to
// systemd-measure's environment; stop ends the swtpm and says how it
// failed if it exited on its own, to explain a failed systemd-measure.
func measureTPM(ctx context.Context, dir string) (env []string, stop func() string, err error) {
	noop := func() string { return "" }
	if os.Getenv("SYSTEMD_TPM2_DEVICE") != "" {
		return nil, noop, nil
	}
	swtpm, lerr := exec.LookPath("swtpm")
	if lerr != nil {
		if _, err := os.Stat("/dev/tpmrm0"); err == nil {
			return []string{"SYSTEMD_TPM2_DEVICE=device:/dev/tpmrm0"}, noop, nil
		}
		return nil, nil, errors.New("systemd-measure 252 needs a TPM to compute the PCR policy: this machine has none (/dev/tpmrm0) and swtpm is not installed (Debian packages swtpm and libtss2-tcti-swtpm0)")
	}
	// The TCTI connects to sock and to sock.ctrl; the listening sockets
	// are made here and handed to swtpm, so they accept before it is up.
	sock := filepath.Join(dir, "tpm")
	if len(sock)+len(".ctrl") >= 108 {
		return nil, nil, fmt.Errorf("the swtpm socket %s.ctrl is longer than a Unix socket path may be: set TMPDIR to a shorter directory", sock)
	}
	state := filepath.Join(dir, "tpmstate")
	if err := os.Mkdir(state, 0o700); err != nil {
		return nil, nil, err
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, p := range []string{sock, sock + ".ctrl"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			return nil, nil, fmt.Errorf("swtpm socket: %w", err)
		}
		l.SetUnlinkOnClose(false)
		f, err := l.File()
		l.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("swtpm socket: %w", err)
		}
		files = append(files, f)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, swtpm, "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--server", "type=unixio,fd=3", "--ctrl", "type=unixio,fd=4", "--flags", "not-need-init,startup-clear")
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting swtpm: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() string {
		select {
		case err := <-exited:
			return fmt.Sprintf("swtpm exited: %v: %s", err, strings.TrimSpace(stderr.String()))
		default:
		}
		cmd.Process.Kill()
		<-exited
		return ""
	}
	return []string{"SYSTEMD_TPM2_DEVICE=swtpm:path=" + sock}, stop, nil
}
