//go:build vm

package qemutests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/realos"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// The real OS scenarios: each slot holds a Debian kernel and an initramfs
// with prestage, the real OS's init and its root image (Debian bookworm
// with systemd, a squashfs built by package realos, cached under
// build/realos), as `stager initramfs build --base` would make it.
// stagehand.realos.steps= names what the test driver in the OS does once
// the health checks and the confirm have run (qemu-tests/realos/layer/driver).

// realOSCmdline is the start of every real OS slot's command line.
const realOSCmdline = "rdinit=/prestage console=ttyS0 panic=5 no_timer_check"

// Real OS boots take longer than the test OS's: systemd starts some
// thirty units under TCG.
const realOSBootTimeout = 4 * time.Minute

// realOSStepTimeout bounds a step within a boot: staging, kexec's load and
// the driver's steps move some 60 MiB of slot (the stager alone is 56 MiB
// unpacked, 17 MiB in the slot's squashfs) under TCG on a shared machine.
const realOSStepTimeout = 2 * time.Minute

// realOSImage builds (or takes from the cache) the root image, once per
// test binary run.
func realOSImage(t testing.TB) string {
	t.Helper()
	return once(t, "realos-image", func(out string) error {
		img, err := realos.Build(context.Background(), repoRoot(), t.Logf)
		if err != nil {
			return err
		}
		t.Logf("real OS root image %s (key %s): built %v in %s", img.Path, img.Key, img.Built, img.Took.Round(100*time.Millisecond))
		return os.Symlink(img.Path, out)
	})
}

// realOSInitramfs writes the initramfs of a real OS slot holding version
// on the kernel of flavor, with more files in the slot's layer, and
// prestage appended.
func realOSInitramfs(t testing.TB, flavor, version string, files ...initramfs.File) string {
	t.Helper()
	k := kernel(t, flavor)
	mods, err := initramfs.OpenModules(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	base, err := realos.Slot{
		Root: repoRoot(), Image: realOSImage(t), Init: buildStatic(t, "./qemu-tests/realos/init"),
		Stager: buildStatic(t, "./cmd/stager"), Modules: mods, Version: version, Files: files,
	}.Archive()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initramfs-"+flavor+"-"+version)
	pre := initramfs.PrestageOptions{Binary: buildStatic(t, "./cmd/prestage"), Modules: mods, Names: prestageModules}
	if err := initramfs.WritePrestaged(out, base, pre); err != nil {
		t.Fatal(err)
	}
	return out
}

// Console lines of the real OS's driver.
var (
	realOSLine    = regexp.MustCompile(`realos: version=(\S+) uname=(\S+) slot=(\S*)`)
	realOSUnits   = regexp.MustCompile(`realos: units: stagehand-check.service=(\S+) stagehand-confirm.service=(\S+) boot-complete.target=(\S+) systemd-bless-boot.service=(\S+)`)
	realOSTrouble = regexp.MustCompile(`realos: step \S+: error.*`)
)

// expectRealOS waits for the real OS's driver to say what booted and
// checks it.
func expectRealOS(t testing.TB, r *vm.Run, what, version string, k Kernel, slot meta.Slot) time.Duration {
	t.Helper()
	got, at := expect(t, r, what, realOSBootTimeout, realOSLine)
	if got[1] != version || got[2] != k.Release || got[3] != string(slot) {
		t.Fatalf("%s: the real OS says version=%s uname=%s slot=%s, want version=%s uname=%s slot=%s",
			what, got[1], got[2], got[3], version, k.Release, slot)
	}
	return at
}

// realOSPowerDown waits for the driver's steps and the power off; an error
// of a step fails the test.
func realOSPowerDown(t testing.TB, r *vm.Run, what string) {
	t.Helper()
	expect(t, r, what, realOSStepTimeout, regexp.MustCompile(`realos: powering off`))
	expect(t, r, what, poweroffTimeout, regexp.MustCompile(`reboot: Power down`))
	if err := r.Wait(poweroffTimeout); err != nil {
		t.Fatalf("%s: QEMU after power off: %v", what, err)
	}
	for _, l := range realOSTrouble.FindAllString(ansi.ReplaceAllString(r.Console(), ""), -1) {
		t.Errorf("%s: %s", what, l)
	}
}

// Health checks of the scenarios' slots, in the slot's layer.
var (
	wantedFails = initramfs.File{Path: "etc/stagehand/check/wanted.d/60-fails", Mode: 0o755,
		Data: []byte("#!/bin/sh\necho 'this wanted check fails on purpose'\nexit 1\n")}
	requiredFails = initramfs.File{Path: "etc/stagehand/check/required.d/20-service", Mode: 0o755,
		Data: []byte("#!/bin/sh\necho 'the service of this version does not answer'\nexit 1\n")}
)

// realOSImageBuild builds the installer image of a real OS version (the
// kernel of flavor, the driver's steps, files in its layer) with `stager
// image build` into the OCI layout dir/version, and returns its reference
// there, oci:DIR/VERSION:VERSION.
func realOSImageBuild(t testing.TB, dir, flavor, version, steps string, files ...initramfs.File) string {
	t.Helper()
	return realOSImageBuildArgs(t, dir, flavor, version, steps, nil, files...)
}

// realOSImageBuildArgs is realOSImageBuild with more arguments of stager
// image build (--uki).
func realOSImageBuildArgs(t testing.TB, dir, flavor, version, steps string, args []string, files ...initramfs.File) string {
	t.Helper()
	layout := "oci:" + filepath.Join(dir, version) + ":" + version
	out := hostStager(t, append([]string{"image", "build", "--kernel", kernel(t, flavor).Vmlinuz, "--initramfs", realOSInitramfs(t, flavor, version, files...),
		"--cmdline", realOSCmdline + " stagehand.realos.steps=" + steps, "--version", version, "--output", layout}, args...)...)
	t.Logf("%s", strings.TrimSpace(out))
	return layout
}

// realOSDisk makes a disk whose slot A holds v1 of the real OS on the
// cloud kernel, with the driver's steps and more kernel parameters.
func realOSDisk(t testing.TB, params, steps string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	_, err := bootdisk.Init(context.Background(), img, bootdisk.Config{
		Layout:    testLayout(),
		Kernel:    kernel(t, "cloud").Vmlinuz,
		Initramfs: realOSInitramfs(t, "cloud", "v1"),
		Cmdline:   strings.Join(strings.Fields(realOSCmdline+" "+params+" stagehand.realos.steps="+steps), " "),
		Version:   "v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// realOSTiming is the driver's timing line.
var realOSTiming = regexp.MustCompile(`realos: timing: boot-complete=(\d+)us confirm=(-?\d+)us`)

// TestRealOSUpgrade: the whole story on the real OS, in two power-ons of
// one machine.
//
// v2 is a unified kernel image (v1 and v3 Type #1 entries): reached by
// kexec in power on 1, started by the firmware in power on 2.
//
// Power on 1, the plain boot: OVMF, systemd-boot, v1's kernel (slot a,
// cloud), prestage (nothing staged: it hands off), the real OS's init
// (squashfs root under a tmpfs overlay, switch_root), systemd up to
// boot-complete.target through the health checks and the confirm unit
// (slot a is confirmed already); the driver shows the units and the early
// stagehand: lines of this boot from journalctl -k -b, opens a file on the ESP
// (mounted by systemd's automount on first access) and keeps it open,
// mounts the images disk and runs `stager --image oci:…v2 --reboot`:
// staging writes only STAGE and META, and the reboot goes through
// systemd, which stops the holder and unmounts the ESP. The firmware
// starts a again; its prestage applies v2 and kexecs into the generic
// kernel. v2's wanted check fails: the confirm unit confirms it after
// boot-complete.target, the warning recorded in META.
//
// Power on 2 (cold, v3 staged on the host meanwhile): the firmware starts
// v2 (slot b: it stayed); its prestage applies v3 to slot a and kexecs.
// v3's required check fails: no confirm, stager check --reboot; the
// firmware boots a's counted entry once more (systemd-bless-boot pulled in
// by LoaderBootCountPath, never run: boot-complete.target is not
// reached), it fails again, and the next boot is b's, whose prestage rolls
// back; v2's stager status says why.
func TestRealOSUpgrade(t *testing.T) {
	checkHost(t)
	k1, k2 := kernel(t, "cloud"), kernel(t, "generic")
	tree := t.TempDir()
	realOSImageBuildArgs(t, tree, "generic", "v2", "units,status,kmsg,timing,poweroff", []string{"--uki"}, wantedFails)
	images := imagesDisk(t, tree)
	const ref = "oci:/mnt/images/v2:v2"
	img := realOSDisk(t, "", "units,kmsg,hold-esp,stage-reboot:"+ref)
	m := newMachine(t, img, "-drive", "if=none,id=images,format=raw,readonly=on,file="+vm.OptValue(images), "-device", "virtio-blk-pci,drive=images")

	r := start(t, m)
	expect(t, r, "v1's prestage", realOSBootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	expect(t, r, "v1's init", realOSStepTimeout, regexp.MustCompile(`realos-init: root: /root.sfs \(/dev/loop0, squashfs, read-only\) under a tmpfs overlay with the slot.s layer /slot.sfs \(/dev/loop1\)`))
	v1 := expectRealOS(t, r, "v1", "v1", k1, meta.SlotA)
	got, _ := expect(t, r, "v1's units", realOSStepTimeout, realOSUnits)
	if got[1] != "active" || got[2] != "active" || got[3] != "active" {
		t.Errorf("v1's units: check %s, confirm %s, boot-complete.target %s; want all active", got[1], got[2], got[3])
	}
	expect(t, r, "v1: journalctl -k -b", realOSStepTimeout, regexp.MustCompile(`realos: kmsg: .*stagehand: handing off to /init`))
	got, _ = expect(t, r, "v1 holds a file on the ESP", realOSStepTimeout, regexp.MustCompile(`realos: esp: (systemd-1 autofs /dev/vda1 vfat .*)`))
	t.Logf("v1: esp: %s", got[1])
	got, staged := expect(t, r, "stager --image in v1", realOSStepTimeout, regexp.MustCompile(`realos: stager: (staged `+regexp.QuoteMeta(ref)+` \(sha256:[0-9a-f]+\) for slot b.*)`))
	t.Logf("v1: %s", got[1])
	expect(t, r, "stager --reboot", realOSStepTimeout, regexp.MustCompile(`realos: stager: rebooting through systemd`))
	expect(t, r, "systemd unmounts the ESP", poweroffTimeout, regexp.MustCompile(`Unmounted \S*efi\.mount`))
	apply := applied(t, r)
	expect(t, r, "kexec", realOSStepTimeout, kexecInto)
	expect(t, r, "v2's prestage", realOSBootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2 of slot b \(v2\)`))
	v2 := expectRealOS(t, r, "v2 (kexec)", "v2", k2, meta.SlotB)
	got, _ = expect(t, r, "v2's units", realOSStepTimeout, realOSUnits)
	if got[1] != "active" || got[2] != "active" || got[3] != "active" {
		t.Errorf("v2's units: check %s, confirm %s, boot-complete.target %s; want all active", got[1], got[2], got[3])
	}
	expect(t, r, "v2: stager status", realOSStepTimeout, regexp.MustCompile(`realos: status: slot b:\s+good\s+v2`))
	expect(t, r, "v2: journalctl -k -b", realOSStepTimeout, regexp.MustCompile(`realos: kmsg: .*stagehand: trial → trial \(slot b\): trial boot 1 of 2`))
	tm, _ := expect(t, r, "v2: timing", realOSStepTimeout, realOSTiming)
	realOSPowerDown(t, r, "v2")
	if n := strings.Count(r.Console(), "BdsDxe: starting"); n != 2 {
		t.Errorf("the firmware started %d times, want 2 (power on, stager --reboot)", n)
	}
	t.Logf("power on 1: v1's driver after %s, staged after %s; apply %s; v2 (kexec'd) boot-complete.target %sus after its kernel started, confirm %sus; power off after %s",
		round(v1), round(staged), round(apply), tm[1], tm[2], round(r.Elapsed()))
	t.Logf("v2 (kexec'd) driver %s after power on", round(v2))

	st := status(t, img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA || sl.B.State != "good" || sl.B.Version != "v2" || st.Staged != nil || sl.Pending != meta.SlotB {
		t.Fatalf("META after v2's boot: %+v%s", sl, lastReasons(st, 5))
	}
	var checked string
	for _, x := range st.Transitions {
		if strings.HasPrefix(x.Reason, "health checks of slot b (v2)") {
			checked = x.Reason
		}
	}
	if !strings.Contains(checked, "passed") || !strings.Contains(checked, "60-fails") {
		t.Errorf("META records v2's health checks as %q, want passed with the wanted check 60-fails's warning%s", checked, lastReasons(st, 5))
	}
	espOf(t, img, false, func(esp *fat.Volume, _ *systemdboot.Loader) {
		b, err := esp.ReadFile(HeldFileOnESP)
		if err != nil || !strings.HasPrefix(string(b), "held open by the real OS") {
			t.Errorf("%s on the ESP: %q, %v", HeldFileOnESP, b, err)
		}
	})
	// Confirmed after a kexec: firmware start pending, its entry counted
	// until the next power-on's firmware start of it.
	checkEntries(t, img, "after v2's confirm", "loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b+2.efi")
	fsckESP(t, img)

	// v3, whose required check fails, staged on the host.
	v3 := realOSImageBuild(t, t.TempDir(), "cloud", "v3", "units", requiredFails)
	t.Logf("staged v3 on the host:\n%s", strings.TrimSpace(hostStager(t, "--image", v3, "--disk", img)))
	r = start(t, m)
	got, _ = expect(t, r, "the cold boot", realOSBootTimeout, regexp.MustCompile(`Command line: (.*)`))
	if strings.Contains(got[1], "stagehand.slot") || !strings.Contains(r.Console(), k2.Release) {
		t.Errorf("the cold boot started %q, want slot b's UKI (v2, %s), whose command line names no slot", got[1], k2.Release)
	}
	expect(t, r, "v2's first firmware start completes its blessing", realOSBootTimeout, regexp.MustCompile(`stagehand: staged → staged \(slot b\): slot b was started by the firmware: its blessing is complete`))
	expect(t, r, "v2's prestage applies v3", realOSBootTimeout, regexp.MustCompile(`stagehand: staged → applying \(slot a\)`))
	expect(t, r, "v2's prestage arms v3's trial", realOSBootTimeout, regexp.MustCompile(`stagehand: applying → trial \(slot a\)`))
	expect(t, r, "kexec into v3", realOSStepTimeout, regexp.MustCompile(`stagehand: kexec into slot a after`))
	for try := 1; try <= 2; try++ {
		what := fmt.Sprintf("v3's try %d", try)
		expect(t, r, what, realOSBootTimeout, regexp.MustCompile(fmt.Sprintf(`stagehand: trial → trial \(slot a\): trial boot %d of 2 of slot a \(v3\)`, try)))
		expect(t, r, what, realOSBootTimeout, regexp.MustCompile(`the trial slot is not healthy: rebooting \(\d tries left`))
	}
	expect(t, r, "b's prestage rolls back", realOSBootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot a\): (.*)`))
	expectRealOS(t, r, "v2 again", "v2", k2, meta.SlotB)
	// Its UKI started by the firmware: the units run because the loader
	// names the entry (LoaderEntrySelected), not the command line.
	got, _ = expect(t, r, "v2's units, started by the firmware", realOSStepTimeout, realOSUnits)
	if got[1] != "active" || got[2] != "active" || got[3] != "active" {
		t.Errorf("v2's units, its UKI started by the firmware: check %s, confirm %s, boot-complete.target %s; want all active", got[1], got[2], got[3])
	}
	got, _ = expect(t, r, "v2: stager status", realOSStepTimeout, regexp.MustCompile(`realos: status: slot a:\s+bad\s+v3\s*(.*)`))
	t.Logf("v2: stager status: slot a: bad v3 %s", got[1])
	realOSPowerDown(t, r, "v2 again")
	if n := strings.Count(r.Console(), "BdsDxe: starting"); n != 3 {
		t.Errorf("the firmware started %d times, want 3 (power on, v3's two failed checks)", n)
	}
	t.Logf("power on 2: v2 back after %s", round(r.Elapsed()))

	st = status(t, img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.A.State != "bad" || sl.A.Version != "v3" || !strings.Contains(sl.A.Reason, "health check failed") {
		t.Errorf("META after v3's failed trial: %+v%s", sl, lastReasons(st, 6))
	}
	if es := espEntries(t, img); len(es) != 2 || es[1] != "EFI/Linux/stagehand-b.efi" || !strings.HasPrefix(es[0], "loader/entries/stagehand-a+") {
		t.Errorf("entries after v3's failed trial: %v, want a's counted entry (never blessed) and b's blessed UKI", es)
	}
	fsckESP(t, img)
}

// TestRealOSBlessBoot: systemd-bless-boot present and active, and a UKI
// slot started by the firmware. v1 runs with stagehand.kexec=0, so its
// prestage applies the staged v2, a unified kernel image, and reboots
// through the firmware: systemd-boot boots b's counted UKI
// (EFI/Linux/stagehand-b+1-1.efi) and sets LoaderBootCountPath, which
// makes systemd 252's generator pull systemd-bless-boot.service in. The
// UKI's own command line names no slot: the health check and confirm
// units run because the loader says which entry it booted
// (LoaderEntrySelected). stager confirm (the confirm unit) blesses the
// entry, META first; bless-boot, ordered after it by contrib's drop-in,
// finds it blessed and succeeds.
// The result is a plain confirm's: META and the entries agree, and the ESP
// passes fsck.fat -n. Then v2 runs stager rollback --reboot: systemd
// reboots, the firmware starts slot a's default entry, and v1 runs again,
// with META saying why.
func TestRealOSBlessBoot(t *testing.T) {
	checkHost(t)
	k2 := kernel(t, "generic")
	img := realOSDisk(t, "stagehand.kexec=0", "poweroff")
	v2 := realOSImageBuildArgs(t, t.TempDir(), "generic", "v2", "units,bless,status,rollback-reboot", []string{"--uki"})
	t.Logf("staged v2 on the host:\n%s", strings.TrimSpace(hostStager(t, "--image", v2, "--disk", img)))
	r := start(t, newMachine(t, img))
	applied(t, r)
	expect(t, r, "the firmware reboot", realOSStepTimeout, regexp.MustCompile(`stagehand: .*reboot`))
	expectRealOS(t, r, "v2 (firmware, its UKI)", "v2", k2, meta.SlotB)
	// The last kernel command line so far is v2's.
	if all := regexp.MustCompile(`Command line: (.*)`).FindAllStringSubmatch(ansi.ReplaceAllString(r.Console(), ""), -1); len(all) == 0 || strings.Contains(all[len(all)-1][1], "stagehand.slot") {
		t.Errorf("v2's command line names a slot, or none was printed (%q): not the UKI's own", all)
	}
	got, _ := expect(t, r, "v2's units", realOSStepTimeout, realOSUnits)
	if got[1] != "active" || got[2] != "active" || got[3] != "active" || got[4] != "active" {
		t.Errorf("v2's units: check %s, confirm %s, boot-complete.target %s, systemd-bless-boot %s; want all active", got[1], got[2], got[3], got[4])
	}
	expect(t, r, "v2: stager status", realOSStepTimeout, regexp.MustCompile(`realos: status: slot b:\s+good\s+v2`))
	for _, l := range regexp.MustCompile(`realos: bless: .*`).FindAllString(ansi.ReplaceAllString(r.Console(), ""), -1) {
		t.Logf("%s", l)
	}
	got, _ = expect(t, r, "v2: stager rollback --reboot", realOSStepTimeout, regexp.MustCompile(`realos: stager: (slot a \(v1\) is the default now.*)`))
	t.Logf("v2: %s", got[1])
	expect(t, r, "stager rollback --reboot", realOSStepTimeout, regexp.MustCompile(`realos: stager: rebooting through systemd`))
	expectRealOS(t, r, "v1 again (firmware)", "v1", kernel(t, "cloud"), meta.SlotA)
	realOSPowerDown(t, r, "v1")
	if n := strings.Count(r.Console(), "BdsDxe: starting"); n != 3 {
		t.Errorf("the firmware started %d times, want 3 (power on, the apply's reboot, the rollback's)", n)
	}
	st := status(t, img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.Previous != meta.SlotB || sl.B.State != "good" || sl.B.Version != "v2" || sl.A.State != "good" {
		t.Errorf("META after the rollback: %+v%s", sl, lastReasons(st, 5))
	}
	if last := st.Transitions[len(st.Transitions)-1]; !strings.Contains(last.Reason, "rolled back by stager rollback from slot b to slot a") {
		t.Errorf("last transition %+v, want the rollback", last)
	}
	checkEntries(t, img, "after the rollback", "loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b.efi")
	fsckESP(t, img)
}
