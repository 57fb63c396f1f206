//go:build vm

package qemutests

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// The upgrade story on GRUB machines: disks made by bootdisk.Init with
// grub-bios (booted by SeaBIOS, QEMU's own BIOS) and grub-efi (OVMF), the
// same test OS, prestage and payloads as the systemd-boot scenarios. GRUB
// keeps a trial's tries in grubenv on the ESP; prestage counts a kexec into
// the trial there before it jumps (grub.Loader.CountKexec), and GRUB counts
// every start of it, so a trial gets DefaultTries boots whichever way it is
// reached.

// newGRUBUpgrade is newUpgrade on a disk with the GRUB bootloader bl
// (bootdisk.GRUBBIOS or GRUBEFI) under firmware fw; args go to QEMU.
func newGRUBUpgrade(t *testing.T, bl string, fw vm.Firmware, v1Params, v1Steps, v2Steps string, args ...string) *upgrade {
	t.Helper()
	checkHost(t)
	u := &upgrade{k1: kernel(t, "cloud"), k2: kernel(t, "generic")}
	dir := t.TempDir()
	u.img = filepath.Join(dir, "disk.img")
	cmdline := strings.Join(strings.Fields(slotCmdline+" "+v1Params+" stagehand.testos.steps="+v1Steps), " ")
	layout := testLayout()
	if bl == bootdisk.GRUBBIOS {
		layout.BIOSBoot = true
		layout.Size = layout.MinSize()
	}
	_, err := bootdisk.Init(context.Background(), u.img, bootdisk.Config{
		Layout:     layout,
		Kernel:     u.k1.Vmlinuz,
		Initramfs:  slotInitramfs(t, "cloud", "v1"),
		Cmdline:    cmdline,
		Version:    "v1",
		Bootloader: bl,
	})
	if err != nil {
		t.Fatal(err)
	}
	if v2Steps != "" {
		stageImage(t, u.img, buildV2(t, filepath.Join(dir, "images-v2"), v2Steps), meta.SlotB)
	}
	u.m = newMachineOn(t, fw, u.img, args...)
	return u
}

// stageImage stages the image ref on img with the host's stager and checks
// that it targets slot.
func stageImage(t *testing.T, img, ref string, slot meta.Slot) {
	t.Helper()
	out := hostStager(t, "--image", ref, "--disk", img)
	t.Logf("staged on the host:\n%s", strings.TrimSpace(out))
	if st := status(t, img); st.Slots.Phase != meta.PhaseStaged || st.Staged == nil || st.Staged.Target != slot {
		t.Fatalf("after stager --image: phase %s, staged %+v", st.Slots.Phase, st.Staged)
	}
}

// buildV3 is the installer image of version (v3 or later): the kernel of
// flavor, the test OS of that version with steps, slotCmdline and params.
func buildV3(t testing.TB, dir, version, flavor, params, steps string) string {
	t.Helper()
	layout := "oci:" + dir + ":" + version
	out := hostStager(t, "image", "build", "--kernel", kernel(t, flavor).Vmlinuz, "--initramfs", slotInitramfs(t, flavor, version),
		"--cmdline", strings.Join(strings.Fields(slotCmdline+" "+params+" stagehand.testos.steps="+steps), " "), "--version", version, "--output", layout)
	t.Logf("%s", strings.TrimSpace(out))
	return layout
}

// grubChoice is the stagehand.grub= a slot booted with, as the test OS
// prints its command line (the status step): MODE:WANT:RAN.
var grubChoice = regexp.MustCompile(`stagehand\.grub=(\w+):([ab]):([ab]+)`)

// grubMachine is a GRUB disk's bootloader and the firmware that boots it.
type grubMachine struct {
	bootloader string
	fw         vm.Firmware
}

var (
	grubBIOS = grubMachine{bootloader: bootdisk.GRUBBIOS, fw: vm.SeaBIOS}
	grubEFI  = grubMachine{bootloader: bootdisk.GRUBEFI, fw: vm.OVMF}
)

// The upgrade story and the trial through GRUB, on each firmware: four
// tests so that make qemu-test's lanes can share them.
func TestGRUBUpgradeBIOS(t *testing.T) { grubUpgrade(t, grubBIOS) }
func TestGRUBUpgradeEFI(t *testing.T)  { grubUpgrade(t, grubEFI) }
func TestGRUBNoKexecBIOS(t *testing.T) { grubNoKexec(t, grubBIOS) }
func TestGRUBNoKexecEFI(t *testing.T)  { grubNoKexec(t, grubEFI) }

// grubUpgrade: v1 boots from GRUB; v2, staged on the host, is applied by
// v1's prestage, kexec'd (the kexec counted in grubenv as GRUB would have),
// confirmed by the test OS, and started by GRUB at the next cold boot,
// which completes its blessing; a second cold boot stays on v2. Then v3,
// which panics, is staged: v2's prestage applies it to slot a and kexecs
// it, it panics, GRUB starts it once more (its last try), it panics again,
// and GRUB boots v2, whose prestage rolls v3 back with the reason. Then v4,
// which hangs with the watchdog armed: the same, the watchdog resetting it.
func grubUpgrade(t *testing.T, gm grubMachine) {
	u := newGRUBUpgrade(t, gm.bootloader, gm.fw, "", "", "confirm,status,poweroff", watchdogArgs...)
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2 of slot b \(v2\)`))
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\), firmware start pending`))
	powerDown(t, r, "v2")
	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Pending != meta.SlotB || sl.B.State != "good" {
		t.Fatalf("META after confirm: %+v%s", sl, lastReasons(st, 4))
	}

	// Cold: GRUB starts b (its trial's last try), whose prestage
	// completes the blessing.
	r = start(t, u.m)
	expect(t, r, "cold boot: the blessing completed", bootTimeout, regexp.MustCompile(`slot b was started by the firmware: its blessing is complete`))
	expectTestOS(t, r, "cold boot", "v2", u.k2, meta.SlotB)
	got, _ := expect(t, r, "cold boot: GRUB's choice", stepTimeout, grubChoice)
	if got[1] != "trial" || got[2] != "b" || got[3] != "b" {
		t.Errorf("cold boot: stagehand.grub=%s:%s:%s, want trial:b:b (the armed trial's last try)", got[1], got[2], got[3])
	}
	powerDown(t, r, "cold boot")
	r = start(t, u.m)
	expect(t, r, "second cold boot: prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	expectTestOS(t, r, "second cold boot", "v2", u.k2, meta.SlotB)
	got, _ = expect(t, r, "second cold boot: GRUB's choice", stepTimeout, grubChoice)
	if got[1] != "good" || got[2] != "b" || got[3] != "b" {
		t.Errorf("second cold boot: stagehand.grub=%s:%s:%s, want good:b:b", got[1], got[2], got[3])
	}
	powerDown(t, r, "second cold boot")
	st = status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Pending != "" || sl.LoaderDefault != meta.SlotB {
		t.Fatalf("META after the cold boots: %+v%s", sl, lastReasons(st, 4))
	}

	for _, bad := range []struct {
		version, steps string
		k              Kernel         // the cloud kernel has no i6300esb: the generic one for the watchdog
		fails          *regexp.Regexp // what ends each try
		how            string
	}{
		{"v3", "panic", u.k1, panicked, "panics"},
		{"v4", "watchdog,hang", u.k2, regexp.MustCompile(`stagehand-testos: hanging`), "hangs, reset by the watchdog"},
	} {
		flavor := "cloud"
		if bad.k == u.k2 {
			flavor = "generic"
		}
		stageImage(t, u.img, buildV3(t, filepath.Join(t.TempDir(), "images-"+bad.version), bad.version, flavor, "", bad.steps), meta.SlotA)
		r = start(t, u.m)
		expect(t, r, "v2's prestage arms "+bad.version, bootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot a\): .*trying `+bad.version+` with 2 boots to confirm`))
		expect(t, r, "kexec into "+bad.version, stepTimeout, regexp.MustCompile(`stagehand: kexec into slot a`))
		expectTestOS(t, r, bad.version+", kexec'd", bad.version, bad.k, meta.SlotA)
		expect(t, r, bad.version+", kexec'd", stepTimeout, bad.fails)
		expect(t, r, bad.version+" from GRUB: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot a\): trial boot 2 of 2`))
		expectTestOS(t, r, bad.version+" from GRUB", bad.version, bad.k, meta.SlotA)
		got, _ := expect(t, r, bad.version+" from GRUB: GRUB's choice", stepTimeout, grubChoice)
		if got[1] != "trial" || got[2] != "a" {
			t.Errorf("%s from GRUB: stagehand.grub=%s:%s:%s, want trial:a:a", bad.version, got[1], got[2], got[3])
		}
		expect(t, r, bad.version+" from GRUB", stepTimeout, bad.fails)
		got, _ = expect(t, r, "back on v2: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot a\): rolled back: (.*)`))
		t.Logf("%s %s: v2's prestage: rolled back: %s", bad.version, bad.how, got[1])
		expectTestOS(t, r, "back on v2", "v2", u.k2, meta.SlotB)
		powerDown(t, r, "back on v2")
		st = status(t, u.img)
		if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Trial != "" || sl.A.State != "bad" ||
			!strings.Contains(sl.A.Reason, "did not confirm") || sl.B.State != "good" || sl.A.Version != bad.version {
			t.Errorf("META after %s's rollback: %+v%s", bad.version, sl, lastReasons(st, 5))
		}
	}
}

// grubNoKexec: stagehand.kexec=0 on v1, so every trial boot goes through
// the firmware and GRUB. v2 arms the watchdog and hangs: GRUB counts its
// two tries down in grubenv (trial:b:b twice), the watchdog resets the
// machine each time, and GRUB then boots v1, whose prestage rolls v2 back.
// (A trial GRUB starts that confirms is TestPowerCutsGRUB's last cut.)
func grubNoKexec(t *testing.T, gm grubMachine) {
	u := newGRUBUpgrade(t, gm.bootloader, gm.fw, "stagehand.kexec=0", "status", "status,watchdog,hang", watchdogArgs...)
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "firmware reboot", stepTimeout, regexp.MustCompile(`stagehand: stagehand.kexec=0: rebooting through the firmware, which boots slot b once`))
	for i, what := range []string{"try 1", "try 2"} {
		expect(t, r, what+": prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot `+string(rune('1'+i))+` of 2`))
		expectTestOS(t, r, what, "v2", u.k2, meta.SlotB)
		got, _ := expect(t, r, what+": GRUB's choice", stepTimeout, grubChoice)
		if got[1] != "trial" || got[2] != "b" {
			t.Errorf("%s: stagehand.grub=%s:%s:%s, want trial:b:b", what, got[1], got[2], got[3])
		}
		expect(t, r, what+": hanging", stepTimeout, regexp.MustCompile(`stagehand-testos: hanging`))
	}
	got, _ := expect(t, r, "back on v1: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot b\): rolled back: (.*)`))
	t.Logf("v1's prestage: rolled back: %s", got[1])
	expectTestOS(t, r, "back on v1", "v1", u.k1, meta.SlotA)
	got, _ = expect(t, r, "back on v1: GRUB's choice", stepTimeout, grubChoice)
	if got[1] != "good" || got[2] != "a" {
		t.Errorf("back on v1: stagehand.grub=%s:%s:%s, want good:a:a (the trial's tries spent)", got[1], got[2], got[3])
	}
	powerDown(t, r, "back on v1")
	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm") {
		t.Errorf("META after the rollback: %+v%s", sl, lastReasons(st, 5))
	}
}
