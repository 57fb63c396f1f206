//go:build vm

package qemutests

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// The UKI scenarios (issue 15): slots as unified kernel images, Type #2
// entries EFI/Linux/stagehand-X+N.efi that systemd-boot counts, built by
// `stager image build --uki` from the same Debian kernels and test OS
// initramfs as the Type #1 scenarios; with Secure Boot, on OVMF's snakeoil
// build with systemd-boot and the UKIs signed by its key.

// ukiSpec is one version of the OS as a UKI.
type ukiSpec struct {
	flavor, version string
	params          string // more kernel parameters (stagehand.kexec=0)
	steps           string // the test OS's steps
	signed          bool   // the UKI signed with the snakeoil key (in db)
	trustedKernel   bool   // the kernel inside re-signed with the snakeoil key (ukiKernel)
	pcrKey          string // a PEM RSA key: the UKI carries a PCR 11 policy signed with it (.pcrsig, .pcrpkey)
}

// cmdline is the version's kernel command line: slotCmdline, its
// parameters and the test OS's steps.
func (s ukiSpec) cmdline() string {
	return strings.Join(strings.Fields(slotCmdline+" "+s.params+" stagehand.testos.steps="+s.steps), " ")
}

// snakeoil is the snakeoil key without its passphrase, and its
// certificate.
func snakeoil(t testing.TB) (key, cert string) {
	t.Helper()
	checkSecureBootHost(t)
	return boottest.Snakeoil(t, t.TempDir())
}

// checkSecureBootHost fails the test when the Secure Boot firmware or the
// signing tools are missing.
func checkSecureBootHost(t testing.TB) {
	t.Helper()
	if err := vm.CheckHost(vm.OVMFSecureBoot); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"sbsign", "sbattach", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (Debian packages sbsigntool, openssl): %s", tool, vm.Fix)
		}
	}
	for _, f := range []string{boottest.SnakeoilKey, boottest.SnakeoilCert} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("the snakeoil key of Debian's ovmf is missing (%v): %s", err, vm.Fix)
		}
	}
}

// signedSystemdBoot is Debian's systemd-boot signed with the snakeoil key.
func signedSystemdBoot(t testing.TB) string {
	t.Helper()
	key, cert := snakeoil(t)
	return once(t, "systemd-boot-signed", func(out string) error {
		return sbsign(key, cert, systemdboot.EFIBinary, out)
	})
}

func sbsign(key, cert, in, out string) error {
	if b, err := exec.Command("sbsign", "--key", key, "--cert", cert, "--output", out, in).CombinedOutput(); err != nil {
		return fmt.Errorf("sbsign %s: %v: %s", in, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// ukiKernel is the kernel of flavor as the UKI carries it: Debian's
// vmlinuz as shipped (signed by the Debian Secure Boot CA, which the kernel
// itself does not trust: it has only its build key and, under Secure
// Boot, UEFI db's keys), or, with reSign, its signature replaced by the
// snakeoil key's, which is in db: a kernel a locked-down kernel kexecs.
func ukiKernel(t testing.TB, flavor string, reSign bool) string {
	t.Helper()
	k := kernel(t, flavor)
	if !reSign {
		return k.Vmlinuz
	}
	key, cert := snakeoil(t)
	return once(t, "vmlinuz-snakeoil-"+flavor, func(out string) error {
		unsigned := out + ".unsigned"
		b, err := os.ReadFile(k.Vmlinuz)
		if err == nil {
			err = os.WriteFile(unsigned, b, 0o644)
		}
		if err != nil {
			return err
		}
		if b, err := exec.Command("sbattach", "--remove", unsigned).CombinedOutput(); err != nil {
			return fmt.Errorf("sbattach --remove %s: %v: %s", unsigned, err, strings.TrimSpace(string(b)))
		}
		return sbsign(key, cert, unsigned, out)
	})
}

// ukiFile builds s as a UKI file (for stager disk init), as `stager image
// build --uki` does.
func ukiFile(t testing.TB, s ukiSpec) string {
	t.Helper()
	o := installer.UKIOptions{Kernel: ukiKernel(t, s.flavor, s.trustedKernel), Initramfs: slotInitramfs(t, s.flavor, s.version),
		Cmdline: s.cmdline(), Version: s.version}
	if s.signed {
		o.SignKey, o.SignCert = snakeoil(t)
	}
	o.PCRPrivateKey = s.pcrKey
	out := filepath.Join(t.TempDir(), s.version+".efi")
	if err := installer.BuildUKI(context.Background(), out, o); err != nil {
		t.Fatal(err)
	}
	return out
}

// ukiDisk makes a disk whose slot A holds v1: a UKI when asUKI, else
// Type #1 entries (kernel, initramfs, command line).
// loader is the systemd-boot binary ("" for Debian's).
func ukiDisk(t testing.TB, v1 ukiSpec, asUKI bool, loader string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	cfg := bootdisk.Config{Layout: testLayout(), Version: v1.version, LoaderEFI: loader}
	if asUKI {
		cfg.UKI = ukiFile(t, v1)
	} else {
		cfg.Kernel, cfg.Initramfs, cfg.Cmdline = kernel(t, v1.flavor).Vmlinuz, slotInitramfs(t, v1.flavor, v1.version), v1.cmdline()
	}
	if _, err := bootdisk.Init(context.Background(), img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// stageSpec builds s into an installer image with `stager image build`
// (with --uki, signed with --sign-key/--sign-cert, unless asUKI is false:
// a kernel and initramfs) and stages it on img with `stager --image`.
func stageSpec(t testing.TB, img string, s ukiSpec, asUKI bool, target meta.Slot, stageArgs ...string) {
	t.Helper()
	layout := "oci:" + filepath.Join(t.TempDir(), "images") + ":" + s.version
	args := []string{"image", "build", "--kernel", ukiKernel(t, s.flavor, s.trustedKernel), "--initramfs", slotInitramfs(t, s.flavor, s.version),
		"--cmdline", s.cmdline(), "--version", s.version, "--output", layout}
	if asUKI {
		args = append(args, "--uki")
	}
	if s.signed {
		key, cert := snakeoil(t)
		args = append(args, "--sign-key", key, "--sign-cert", cert)
	}
	if s.pcrKey != "" {
		args = append(args, "--pcr-private-key", s.pcrKey)
	}
	t.Logf("%s", strings.TrimSpace(hostStager(t, args...)))
	t.Logf("%s", strings.TrimSpace(hostStager(t, append([]string{"--image", layout, "--disk", img}, stageArgs...)...)))
	if st := status(t, img); st.Slots.Phase != meta.PhaseStaged || st.Staged == nil || st.Staged.Target != target {
		t.Fatalf("after stager --image: phase %s, staged %+v", st.Slots.Phase, st.Staged)
	}
}

// ESP listings: entries of both kinds.
func espEntries(t testing.TB, img string) []string {
	t.Helper()
	var out []string
	espOf(t, img, false, func(esp *fat.Volume, _ *systemdboot.Loader) {
		for _, d := range []string{"loader/entries", "EFI/Linux"} {
			names, err := esp.ReadDir(d)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range names {
				out = append(out, d+"/"+n)
			}
		}
	})
	return out
}

// checkEntries compares img's entries with want.
func checkEntries(t testing.TB, img, when string, want ...string) {
	t.Helper()
	if d := cmp.Diff(want, espEntries(t, img)); d != "" {
		t.Errorf("entries %s (-want, +got):\n%s", when, d)
	}
}

// checkMETA checks the slots META records.
func checkMETA(t testing.TB, img, when string, ok func(sl *meta.Slots) bool) *meta.Slots {
	t.Helper()
	st := status(t, img)
	if !ok(st.Slots) {
		t.Errorf("META %s: %+v%s", when, st.Slots, lastReasons(st, 5))
	}
	return st.Slots
}

// expectEFIVars waits for the test OS's efivars line and compares it.
func expectEFIVars(t testing.TB, r *vm.Run, what, oneshot, selected, bootcount string) {
	t.Helper()
	got, _ := expect(t, r, what, stepTimeout, efivarsLine)
	if d := cmp.Diff([]string{oneshot, selected, bootcount}, got[1:]); d != "" {
		t.Errorf("%s: efivars (oneshot, selected, bootcount) (-want, +got):\n%s", what, d)
	}
}

var (
	confirmed  = regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot (\S+) \((\S+)\)`)
	rolledBack = regexp.MustCompile(`stagehand: trial → idle \(slot (\S+)\): rolled back: (.*)`)
	noKexec0   = regexp.MustCompile(`stagehand: stagehand.kexec=0: rebooting through the firmware, which boots slot (\S+) once`)
)

// TestUKIUpgrade: one machine through four upgrades, each a cold power on
// with the next version staged on the host.
//  1. v1 in Type #1 entries → v2, a UKI, applied as EFI/Linux/stagehand-b+2.efi
//     and kexec'd (its .linux, .initrd, .cmdline); v2 confirms, firmware
//     start pending (Type #1 → UKI migration, kexec upgrade).
//  2. A cold boot stays on v2 (the firmware boots its UKI once, which
//     completes the blessing to stagehand-b.efi; the
//     slot is known from LoaderEntrySelected), whose command line has
//     stagehand.kexec=0, so v3 (a UKI in slot a) boots through the firmware's
//     boot-once, systemd-boot counting its try on the Type #2 entry
//     (stagehand-a+2.efi → +1-1); v3 confirms.
//  3. v4, a UKI in slot b, panics at every boot: the kexec'd boot and the
//     firmware's boot-once each spend a try, then slot a's v3 rolls it back
//     and stager status says why.
//  4. v5 in Type #1 entries replaces the bad UKI in slot b (UKI → Type #1):
//     kexec'd and confirmed.
func TestUKIUpgrade(t *testing.T) {
	checkHost(t)
	k1, k2 := kernel(t, "cloud"), kernel(t, "generic")
	v1 := ukiSpec{flavor: "cloud", version: "v1"}
	img := ukiDisk(t, v1, false, "")
	m := newMachine(t, img)

	// 1. Type #1 → UKI, by kexec.
	v2 := ukiSpec{flavor: "generic", version: "v2", params: "stagehand.kexec=0", steps: "efivars,confirm"}
	stageSpec(t, img, v2, true, meta.SlotB)
	r := start(t, m)
	applied(t, r)
	load, _ := expect(t, r, "kexec of v2's UKI", stepTimeout, regexp.MustCompile(`stagehand: loaded slot b's kernel for kexec in (\S+): (.*)`))
	if !strings.HasPrefix(load[2], "stagehand.slot=b rdinit=/prestage") || !strings.Contains(load[2], "stagehand.kexec=0") {
		t.Errorf("kexec command line %q: want the UKI's .cmdline with stagehand.slot=b first", load[2])
	}
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2 of slot b \(v2\)`))
	expectTestOS(t, r, "v2, kexec'd from its UKI", "v2", k2, meta.SlotB)
	expectEFIVars(t, r, "v2, kexec'd", "stagehand-b[.+]*", "stagehand-a.conf", "none")
	expect(t, r, "v2 confirms", stepTimeout, confirmed)
	powerDown(t, r, "v2")
	t.Logf("1. Type #1 v1 → UKI v2 by kexec (kexec_file_load %s), confirmed: %s power on to power off", load[1], round(r.Elapsed()))
	// Confirmed after a kexec: firmware start pending, the UKI counted;
	// the next power-on's firmware start completes its blessing.
	checkEntries(t, img, "after v2 confirmed", "loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b+2.efi")
	checkMETA(t, img, "after v2 confirmed", func(sl *meta.Slots) bool {
		return sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotB && sl.B.State == "good" && sl.B.Version == "v2" && sl.Pending == meta.SlotB
	})
	fsckESP(t, img)

	// 2. UKI → UKI through the firmware (kexec=0).
	stageSpec(t, img, ukiSpec{flavor: "cloud", version: "v3", steps: "efivars,confirm,status"}, true, meta.SlotA)
	r = start(t, m)
	// A cold boot stays on v2: the firmware starts its blessed UKI (the
	// generic kernel, the UKI's command line); its prestage, knowing slot
	// b from LoaderEntrySelected, applies v3 to slot a (it would refuse a
	// payload for the slot it booted from).
	expect(t, r, "cold boot: v2's kernel", bootTimeout, regexp.MustCompile(`Linux version `+regexp.QuoteMeta(k2.Release)+` `))
	expect(t, r, "cold boot: v2's command line", bootTimeout, regexp.MustCompile(`Kernel command line: `+regexp.QuoteMeta(v2.cmdline())+`\s`))
	expect(t, r, "cold boot: v2's blessing completed", bootTimeout, regexp.MustCompile(`stagehand: staged → staged \(slot b\): slot b was started by the firmware: its blessing is complete`))
	expect(t, r, "cold boot: v2's prestage applies v3", bootTimeout, regexp.MustCompile(`stagehand: staged → applying \(slot a\)`))
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot a\): slot a written and checked; trying v3 with 2 boots`))
	expect(t, r, "v2's prestage", stepTimeout, noKexec0)
	_, rebootAt := expect(t, r, "firmware reboot", stepTimeout, regexp.MustCompile(`stagehand: rebooting through the firmware`))
	expect(t, r, "v3's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot a\): trial boot 1 of 2 of slot a \(v3\)`))
	v3 := expectTestOS(t, r, "v3, booted from its UKI by the firmware", "v3", k1, "")
	expectEFIVars(t, r, "v3 booted by the firmware", "none", "stagehand-a+2.efi", `\EFI\Linux\stagehand-a+1-1.efi`)
	if got, _ := expect(t, r, "v3 confirms", stepTimeout, confirmed); got[1] != "a" || got[2] != "v3" {
		t.Errorf("v3 confirmed slot %s (%s), want a (v3)", got[1], got[2])
	}
	powerDown(t, r, "v3")
	t.Logf("2. cold boot of UKI v2 → UKI v3 through the firmware: reboot to the test OS v3 %s; %s power on to power off", round(v3-rebootAt), round(r.Elapsed()))
	checkEntries(t, img, "after v3 confirmed", "EFI/Linux/stagehand-a.efi", "EFI/Linux/stagehand-b.efi")
	checkMETA(t, img, "after v3 confirmed", func(sl *meta.Slots) bool {
		return sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotA && sl.Previous == meta.SlotB && sl.A.State == "good" && sl.A.Version == "v3"
	})
	fsckESP(t, img)

	// 3. A UKI trial that panics is rolled back by boot counting.
	stageSpec(t, img, ukiSpec{flavor: "generic", version: "v4", steps: "panic"}, true, meta.SlotB)
	r = start(t, m)
	applied4 := regexp.MustCompile(`stagehand: applying → trial \(slot b\): slot b written and checked; trying v4`)
	expect(t, r, "v3's prestage applies v4", bootTimeout, applied4)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "trial boot 1 (kexec)", "v4", k2, meta.SlotB)
	expect(t, r, "trial boot 1 (kexec)", stepTimeout, panicked)
	expect(t, r, "trial boot 2 (boot-once): prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 2 of 2`))
	expectTestOS(t, r, "trial boot 2 (boot-once)", "v4", k2, "")
	expect(t, r, "trial boot 2 (boot-once)", stepTimeout, panicked)
	got, _ := expect(t, r, "back on a: prestage", bootTimeout, rolledBack)
	t.Logf("v3's prestage: rolled back: %s", got[2])
	expectTestOS(t, r, "back on a", "v3", k1, "")
	expectEFIVars(t, r, "back on a", "none", "stagehand-a.efi", "none")
	// v3 was booted by the firmware from its UKI: status knows the slot
	// from LoaderEntrySelected.
	expect(t, r, "stager status on a", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: booted:\s+a\s`))
	expect(t, r, "stager status on a", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+bad\s+v4\s+slot b did not confirm`))
	powerDown(t, r, "back on a")
	t.Logf("3. UKI v4 panics, rolled back to v3: %s power on to power off", round(r.Elapsed()))
	checkEntries(t, img, "after v4 rolled back", "EFI/Linux/stagehand-a.efi", "EFI/Linux/stagehand-b+1-1.efi")
	checkMETA(t, img, "after v4 rolled back", func(sl *meta.Slots) bool {
		return sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotA && sl.B.State == "bad" && strings.Contains(sl.B.Reason, "did not confirm")
	})
	fsckESP(t, img)

	// 4. UKI → Type #1, by kexec.
	stageSpec(t, img, ukiSpec{flavor: "generic", version: "v5", steps: "efivars,confirm"}, false, meta.SlotB)
	r = start(t, m)
	expect(t, r, "v3's prestage applies v5", bootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot b\): slot b written and checked; trying v5`))
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "v5 kexec'd from Type #1 entries", "v5", k2, meta.SlotB)
	expectEFIVars(t, r, "v5, kexec'd", "stagehand-b[.+]*", "stagehand-a.efi", "none")
	expect(t, r, "v5 confirms", stepTimeout, confirmed)
	powerDown(t, r, "v5")
	t.Logf("4. UKI v3 → Type #1 v5 by kexec, confirmed: %s power on to power off", round(r.Elapsed()))
	checkEntries(t, img, "after v5 confirmed", "loader/entries/stagehand-b+2.conf", "EFI/Linux/stagehand-a.efi")
	checkMETA(t, img, "after v5 confirmed", func(sl *meta.Slots) bool {
		return sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotB && sl.B.State == "good" && sl.B.Version == "v5" && sl.Pending == meta.SlotB
	})
	fsckESP(t, img)
}

// Console lines of a Secure Boot boot: systemd-stub's, the kernel's, and
// the test OS's secureboot step.
var (
	stubSecureBoot = regexp.MustCompile(`EFI stub: UEFI Secure Boot is enabled`)
	lockedDown     = regexp.MustCompile(`Kernel is locked down from EFI Secure Boot`)
	secureBootLine = regexp.MustCompile(`stagehand-testos: secureboot: SecureBoot=(\S+) lockdown=(.*)`)
)

// expectSecureBoot waits for the test OS's secureboot line: Secure Boot
// enforced, the kernel locked down ("integrity").
func expectSecureBoot(t testing.TB, r *vm.Run, what string) {
	t.Helper()
	got, _ := expect(t, r, what, stepTimeout, secureBootLine)
	if got[1] != "true" || !strings.Contains(got[2], "[integrity]") {
		t.Errorf("%s: SecureBoot=%s lockdown=%s; want true and [integrity]", what, got[1], got[2])
	}
}

// TestUKISecureBoot: the UKI upgrade under Secure Boot enforced (OVMF's
// snakeoil build, systemd-boot and the UKIs signed with its key), on one
// machine.
//  1. v1 (signed UKI) → v2 (signed UKI): the firmware boots v1 locked down;
//     its prestage kexecs v2's kernel, re-signed with the snakeoil key,
//     which the locked-down kernel trusts (UEFI db is its platform
//     keyring); v2 says Secure Boot and lockdown are on, and confirms.
//  2. v3 is a signed UKI whose kernel is Debian's as shipped, signed by the
//     Debian Secure Boot CA, which the kernel does not trust without shim:
//     the locked-down kernel refuses to kexec it (ENOKEY), prestage says so and
//     reboots through the firmware, which boots the signed UKI once (its
//     try counted on the Type #2 entry); v3 panics, and v2's prestage rolls
//     it back.
//  3. v4 is an unsigned UKI: prestage does not kexec it (kexec would check
//     only the signed kernel inside and run a slot the firmware will never
//     boot); the firmware refuses it (systemd-boot: Access Denied), OVMF
//     falls back through its boot options to systemd-boot again, the
//     one-shot spent, which boots the default, v2, whose prestage rolls v4
//     back saying Secure Boot refused it.
func TestUKISecureBoot(t *testing.T) {
	checkHost(t)
	checkSecureBootHost(t)
	k1, k2 := kernel(t, "cloud"), kernel(t, "generic")
	v1 := ukiSpec{flavor: "cloud", version: "v1", signed: true}
	img := ukiDisk(t, v1, true, signedSystemdBoot(t))
	m := newMachineOn(t, vm.OVMFSecureBoot, img)
	// Staged on the host: checked against the machine's db and dbx (its
	// firmware's variable store), so that its prestage may kexec it.
	fwVars := t.TempDir()
	if err := m.SecureBootVariables(fwVars); err != nil {
		t.Fatal(err)
	}

	// 1. Signed UKI → signed UKI, by kexec under lockdown.
	stageSpec(t, img, ukiSpec{flavor: "generic", version: "v2", steps: "secureboot,efivars,status,confirm", signed: true, trustedKernel: true}, true, meta.SlotB, "--firmware-vars", fwVars)
	r := start(t, m)
	expect(t, r, "v1: systemd-stub", bootTimeout, stubSecureBoot)
	expect(t, r, "v1: the kernel", bootTimeout, lockedDown)
	applied(t, r)
	load, _ := expect(t, r, "kexec of v2's signed kernel under lockdown", stepTimeout, kexecLoad)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2 of slot b \(v2\)`))
	expectTestOS(t, r, "v2, kexec'd", "v2", k2, meta.SlotB)
	expectSecureBoot(t, r, "v2, kexec'd")
	expectEFIVars(t, r, "v2, kexec'd", "stagehand-b[.+]*", "stagehand-a.efi", "none")
	expect(t, r, "v2 confirms", stepTimeout, confirmed)
	powerDown(t, r, "v2")
	t.Logf("1. signed UKI v1 → signed UKI v2 by kexec under lockdown (kexec_file_load %s), confirmed: %s power on to power off", load[1], round(r.Elapsed()))
	// Confirmed after a kexec: firmware start pending; the next power-on
	// (step 2) starts it through the firmware and completes its blessing.
	checkEntries(t, img, "after v2 confirmed", "EFI/Linux/stagehand-a.efi", "EFI/Linux/stagehand-b+2.efi")
	checkMETA(t, img, "after v2 confirmed", func(sl *meta.Slots) bool {
		return sl.Phase == meta.PhaseIdle && sl.Active == meta.SlotB && sl.B.State == "good" && sl.Pending == meta.SlotB
	})

	// 2. A kernel the running kernel does not trust (Debian's, signed by
	// the Debian CA, as shipped): no kexec under lockdown, the firmware
	// boots the signed UKI.
	stageSpec(t, img, ukiSpec{flavor: "cloud", version: "v3", steps: "panic", signed: true}, true, meta.SlotA, "--firmware-vars", fwVars)
	r = start(t, m)
	expect(t, r, "v2's first firmware start", bootTimeout, regexp.MustCompile(`slot b was started by the firmware: its blessing is complete`))
	expect(t, r, "v2's prestage applies v3", bootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot a\): slot a written and checked; trying v3`))
	got, _ := expect(t, r, "v2's prestage: kexec refused", stepTimeout,
		regexp.MustCompile(`stagehand: (kexec unavailable: kexec_file_load: .*): rebooting through the firmware, which boots slot a once`))
	t.Logf("v2's prestage: %s", got[1])
	if !strings.Contains(got[1], `kernel lockdown "integrity"`) {
		t.Errorf("the kexec refusal %q does not name the lockdown", got[1])
	}
	expect(t, r, "v3's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot a\): trial boot 1 of 2 of slot a \(v3\)`))
	expectTestOS(t, r, "v3, booted by the firmware", "v3", k1, "")
	expect(t, r, "v3", stepTimeout, panicked)
	got, _ = expect(t, r, "back on v2: prestage", bootTimeout, rolledBack)
	t.Logf("v2's prestage: rolled back: %s", got[2])
	expectTestOS(t, r, "back on v2", "v2", k2, "")
	expectSecureBoot(t, r, "back on v2")
	expectEFIVars(t, r, "back on v2", "none", "stagehand-b.efi", "none")
	expect(t, r, "stager status on v2", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot a:\s+bad\s+v3\s+slot a did not confirm`))
	powerDown(t, r, "back on v2")
	t.Logf("2. signed UKI v3 with Debian's kernel as shipped: kexec refused, booted by the firmware, panicked, rolled back: %s power on to power off", round(r.Elapsed()))
	checkEntries(t, img, "after v3 rolled back", "EFI/Linux/stagehand-a+1-1.efi", "EFI/Linux/stagehand-b.efi")

	// 3. An unsigned UKI: the firmware refuses it.
	// Staged with --allow-untrusted: the check against db refuses it.
	stageSpec(t, img, ukiSpec{flavor: "cloud", version: "v4", steps: "confirm"}, true, meta.SlotA, "--firmware-vars", fwVars, "--allow-untrusted")
	r = start(t, m)
	expect(t, r, "v2's prestage applies v4", bootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot a\): slot a written and checked; trying v4`))
	got, _ = expect(t, r, "v2's prestage: no kexec of an untrusted UKI", stepTimeout,
		regexp.MustCompile(`stagehand: reboot: (trying slot a through the firmware, not by kexec: it was staged with --allow-untrusted \(.*not signed.*\))`))
	t.Logf("v2's prestage: %s", got[1])
	got, _ = expect(t, r, "systemd-boot refuses v4", bootTimeout, regexp.MustCompile(`(Error loading \\EFI\\Linux\\stagehand-a\+1-1\.efi: Access Denied)`))
	t.Logf("systemd-boot: %s", got[1])
	// systemd-boot gives up and returns to OVMF, which tries its next boot
	// option: stagehand's second load option, systemd-boot at the
	// removable-media path, which, the one-shot spent, boots the default.
	// No reset is needed.
	got, _ = expect(t, r, "OVMF after the refusal", stepTimeout, regexp.MustCompile(`BdsDxe: failed to start Boot\S+ "stagehand" [^\n]*: (Access Denied)`))
	expect(t, r, "OVMF's next boot option", stepTimeout, regexp.MustCompile(`BdsDxe: starting Boot\S+ "stagehand fallback"`))
	expect(t, r, "back on v2: its kernel", bootTimeout, regexp.MustCompile(`Linux version `+regexp.QuoteMeta(k2.Release)+` `))
	got, _ = expect(t, r, "back on v2: prestage", bootTimeout, rolledBack)
	t.Logf("v2's prestage: rolled back: %s", got[2])
	if !strings.Contains(got[2], "Secure Boot is on and its UKI is not signed: the firmware refuses to start it") {
		t.Errorf("the rollback %q does not say Secure Boot refused the unsigned UKI", got[2])
	}
	expectTestOS(t, r, "back on v2", "v2", k2, "")
	expectSecureBoot(t, r, "back on v2")
	// No reset since the refused start: its count path is still set.
	expectEFIVars(t, r, "back on v2", "none", "stagehand-b.efi", `\EFI\Linux\stagehand-a+1-1.efi`)
	expect(t, r, "stager status on v2", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: booted:\s+b\s`))
	expect(t, r, "stager status on v2", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot a:\s+bad\s+v4\s+slot a did not confirm.*Secure Boot is on and its UKI is not signed`))
	powerDown(t, r, "back on v2")
	if strings.Contains(r.Console(), "Press any key to enter the Boot Manager Menu") {
		t.Error("OVMF stopped at its boot manager: the default slot did not boot after the refusal")
	}
	t.Logf("3. unsigned UKI v4 refused by the firmware, back on v2 through stagehand's second boot option, rolled back: %s power on to power off", round(r.Elapsed()))
	checkEntries(t, img, "after v4 rolled back", "EFI/Linux/stagehand-a+1-1.efi", "EFI/Linux/stagehand-b.efi")
	st := status(t, img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.A.State != "bad" || !strings.Contains(sl.A.Reason, "Secure Boot") {
		t.Errorf("META after v4: %+v%s", sl, lastReasons(st, 5))
	}
	fsckESP(t, img)
}
