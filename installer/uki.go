package installer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/uki"
)

// SystemdStub is where Debian's systemd-boot-efi puts systemd-stub.
const SystemdStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// UKIOptions are the inputs of a unified kernel image.
type UKIOptions struct {
	Kernel    string // path of the kernel (bzImage)
	Initramfs string // path of the initramfs
	Cmdline   string // the kernel command line, embedded (no stagehand.slot=: a UKI serves either slot)
	Version   string // the OS version in .osrel; default: the kernel's release
	Stub      string // systemd-stub; default SystemdStub
	SignKey   string // with SignCert: sign the UKI with sbsign (Secure Boot)
	SignCert  string
}

// BuildUKI writes the UKI to out: systemd-stub with .osrel (ID=stagehand,
// the version), .cmdline, .uname (the kernel's release), .initrd and
// .linux, each section page-aligned as ukify lays them out; signed with
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
	in = append(in,
		uki.Input{Name: uki.SectionUname, Data: strings.NewReader(release), Size: int64(len(release))},
		uki.Input{Name: uki.SectionInitrd, Data: inf, Size: ist.Size()},
		uki.Input{Name: uki.SectionLinux, Data: kf, Size: kst.Size()})
	plain := out
	if o.SignKey != "" {
		if _, err := exec.LookPath("sbsign"); err != nil {
			return errors.New("UKI: signing needs sbsign, which is not installed (Debian package sbsigntool: apt-get install sbsigntool)")
		}
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
