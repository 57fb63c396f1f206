//go:build vm

package qemutests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/stage"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// The pre-stage scenarios: a disk made by bootdisk.Init whose slot A holds
// the cloud kernel (v1), and v2 (the generic kernel, another `uname -r`)
// built into an installer image with `stager image build` and staged on the
// host with `stager --image oci:DIR:v2 --disk IMG`. Each slot's initramfs is
// the test OS's with the pre-stage init appended as `stager initramfs
// build --base` does: /prestage (rdinit=/prestage) with its modules, the
// test OS as /init, the stager at /usr/bin/stager.

// slotCmdline is the start of every slot's command line; the test OS's
// steps follow. no_timer_check: a TCG guest on a loaded host fails the
// kernel's IO-APIC timer check at random ("IO-APIC + timer doesn't work!",
// a panic; seen here at load 13).
const slotCmdline = "rdinit=/prestage console=ttyS0 panic=1 no_timer_check"

// prestageModules are what prestage loads before looking for the disk.
var prestageModules = []string{"virtio_pci", "virtio_blk", "efivarfs"}

// slotInitramfs is the initramfs of a slot holding version on the kernel
// of flavor, built once per test binary run.
func slotInitramfs(t testing.TB, flavor, version string) string {
	t.Helper()
	k := kernel(t, flavor)
	testos, prestage, stager := buildTestOS(t), buildStatic(t, "./cmd/prestage"), buildStatic(t, "./cmd/stager")
	return once(t, "initramfs-"+flavor+"-"+version, func(out string) error {
		base, err := testOSArchive(testos, k, version,
			initramfs.File{Path: "usr/bin/stager", Source: stager, Mode: 0o755})
		if err != nil {
			return err
		}
		mods, err := initramfs.OpenModules(k.Modules)
		if err != nil {
			return err
		}
		return initramfs.WritePrestaged(out, base, initramfs.PrestageOptions{Binary: prestage, Modules: mods, Names: prestageModules})
	})
}

// hostStager runs the stager binary (the one in the initramfs) on the host
// and returns its output.
func hostStager(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(buildStatic(t, "./cmd/stager"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("stager %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// upgrade is one scenario's machine: v1 in slot A, maybe v2 staged.
type upgrade struct {
	img    string
	m      *vm.Machine
	k1, k2 Kernel
}

// newUpgrade makes the disk: slot A holds v1 on the cloud kernel with
// slotCmdline, v1Params and the test OS steps v1Steps. Unless v2Steps is
// "", v2 (generic kernel, its command line slotCmdline with v2Steps) is
// staged through the stager's own commands.
func newUpgrade(t *testing.T, v1Params, v1Steps, v2Steps string) *upgrade {
	t.Helper()
	checkHost(t)
	u := &upgrade{k1: kernel(t, "cloud"), k2: kernel(t, "generic")}
	dir := t.TempDir()
	u.img = filepath.Join(dir, "disk.img")
	cmdline := strings.Join(strings.Fields(slotCmdline+" "+v1Params+" stagehand.testos.steps="+v1Steps), " ")
	_, err := bootdisk.Init(context.Background(), u.img, bootdisk.Config{
		Layout:    testLayout(),
		Kernel:    u.k1.Vmlinuz,
		Initramfs: slotInitramfs(t, "cloud", "v1"),
		Cmdline:   cmdline,
		Version:   "v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if v2Steps != "" {
		layout := buildV2(t, filepath.Join(dir, "images"), v2Steps)
		out := hostStager(t, "--image", layout, "--disk", u.img)
		t.Logf("staged v2 on the host:\n%s", strings.TrimSpace(out))
		if st := status(t, u.img); st.Slots.Phase != meta.PhaseStaged || st.Staged == nil || st.Staged.Target != meta.SlotB {
			t.Fatalf("after stager --image: phase %s, staged %+v", st.Slots.Phase, st.Staged)
		}
	}
	u.m = newMachine(t, u.img)
	return u
}

// buildV2 builds v2's installer image (the generic kernel, its command
// line slotCmdline with the test OS steps v2Steps) with `stager image
// build` into the OCI layout dir, and returns its reference oci:DIR:v2.
func buildV2(t testing.TB, dir, v2Steps string) string {
	t.Helper()
	layout := "oci:" + dir + ":v2"
	out := hostStager(t, "image", "build", "--kernel", kernel(t, "generic").Vmlinuz, "--initramfs", slotInitramfs(t, "generic", "v2"),
		"--cmdline", slotCmdline+" stagehand.testos.steps="+v2Steps, "--version", "v2", "--output", layout)
	t.Logf("%s", strings.TrimSpace(out))
	return layout
}

// status decodes META of img on the host.
func status(t testing.TB, img string) *stage.Status {
	t.Helper()
	st, err := stage.ReadStatus(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// metaHash hashes the META partition of img.
func metaHash(t testing.TB, img string) [32]byte {
	t.Helper()
	h := sha256.New()
	withPartition(t, img, disk.LabelMETA, false, func(r *disk.Region) {
		if _, err := io.Copy(h, io.NewSectionReader(r, 0, r.Size)); err != nil {
			t.Fatal(err)
		}
	})
	return [32]byte(h.Sum(nil))
}

// entries lists the loader entries on img's ESP.
func entries(t testing.TB, img string) []string {
	t.Helper()
	var names []string
	espOf(t, img, false, func(esp *fat.Volume, _ *systemdboot.Loader) {
		var err error
		if names, err = esp.ReadDir("loader/entries"); err != nil {
			t.Fatal(err)
		}
	})
	return names
}

// lastReasons is the last n transitions of st, for failure messages.
func lastReasons(st *stage.Status, n int) string {
	tr := st.Transitions
	if len(tr) > n {
		tr = tr[len(tr)-n:]
	}
	var b strings.Builder
	for _, x := range tr {
		fmt.Fprintf(&b, "\n  %s → %s slot %s: %s", x.From, x.To, x.Slot, x.Reason)
	}
	return b.String()
}

// expect waits for re on r's console and fails the test when it does not
// come; it returns the submatches and the time since power on.
func expect(t testing.TB, r *vm.Run, what string, timeout time.Duration, re *regexp.Regexp) ([]string, time.Duration) {
	t.Helper()
	got, err := r.Expect(context.Background(), timeout, re)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return got, r.Elapsed()
}

// expectTestOS waits for the test OS's line and checks what booted.
func expectTestOS(t testing.TB, r *vm.Run, what, version string, k Kernel, slot meta.Slot) time.Duration {
	t.Helper()
	got, at := expect(t, r, what, bootTimeout, testosLine)
	if got[1] != version || got[2] != k.Release || got[3] != string(slot) {
		t.Fatalf("%s: the test OS says version=%s uname=%s slot=%s, want version=%s uname=%s slot=%s",
			what, got[1], got[2], got[3], version, k.Release, slot)
	}
	return at
}

// stagerTrouble matches what the stager run in the guest says went wrong.
var stagerTrouble = regexp.MustCompile(`stagehand-testos: (stager \S+: (warning|error)|step \S+: error).*`)

// expectBackOnA reads the test OS's report on slot a after the machine
// came back to it: stager status shows slot b as slotB (a regexp), the
// firmware left no boot-once and booted a's plain entry. It then powers
// the machine down.
func expectBackOnA(t testing.TB, r *vm.Run, slotB string) {
	t.Helper()
	expect(t, r, "stager status on a", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+`+slotB))
	got, _ := expect(t, r, "efivars on a", stepTimeout, efivarsLine)
	if got[1] != "none" || got[2] != "stagehand-a.conf" {
		t.Errorf("efivars on a: oneshot=%s selected=%s, want none and stagehand-a.conf", got[1], got[2])
	}
	powerDown(t, r, "back on a")
}

// powerDown waits for the guest to power off and QEMU to exit; a warning
// or error of the stager or of a test OS step fails the test.
func powerDown(t testing.TB, r *vm.Run, what string) {
	t.Helper()
	expect(t, r, what, poweroffTimeout, regexp.MustCompile(`reboot: Power down`))
	if err := r.Wait(poweroffTimeout); err != nil {
		t.Fatalf("%s: QEMU after power off: %v", what, err)
	}
	for _, l := range stagerTrouble.FindAllString(ansi.ReplaceAllString(r.Console(), ""), -1) {
		t.Errorf("%s: %s", what, l)
	}
}

// stageBytes reads the extent of the payload arts in img's STAGE.
func stageBytes(t testing.TB, img string, arts []meta.Artifact) []byte {
	t.Helper()
	var b []byte
	withPartition(t, img, disk.LabelSTAGE, false, func(r *disk.Region) {
		start, end := payload.Extent(arts, r.Size)
		b = make([]byte, end-start)
		if _, err := r.ReadAt(b, start); err != nil {
			t.Fatal(err)
		}
	})
	return b
}

// Console lines of prestage (through /dev/kmsg, with the kernel's
// timestamp) and of the test OS.
var (
	kmsgTime   = `\[\s*(\d+\.\d+)\] `
	toApplying = regexp.MustCompile(kmsgTime + `stagehand: staged → applying \(slot b\): (.*)`)
	toTrial    = regexp.MustCompile(kmsgTime + `stagehand: applying → trial \(slot b\): (.*)`)
	kexecLoad  = regexp.MustCompile(`stagehand: loaded slot b's kernel for kexec in (\S+):`)
	kexecInto  = regexp.MustCompile(`stagehand: kexec into slot b after (\S+)`)
	panicked   = regexp.MustCompile(`Kernel panic - not syncing: sysrq triggered crash`)
)

// seconds parses a kernel timestamp.
func seconds(t testing.TB, s string) time.Duration {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(f * float64(time.Second))
}

// applied follows v1's prestage through the apply of v2 and returns the
// apply time by the kernel's clock (from the commit of applying to that of
// trial: write slot b, read it back, set boot-once).
func applied(t testing.TB, r *vm.Run) time.Duration {
	t.Helper()
	a, _ := expect(t, r, "v1's prestage announces the apply", bootTimeout, toApplying)
	b, _ := expect(t, r, "v1's prestage arms the trial", bootTimeout, toTrial)
	if !strings.Contains(b[2], "trying v2 with 2 boots to confirm") {
		t.Errorf("trial reason %q", b[2])
	}
	return seconds(t, b[1]) - seconds(t, a[1])
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }

// TestPrestagePlainBoot: nothing staged. prestage reads META, says so and
// hands off to the test OS of slot A, which runs `stager status`; META is
// not written (byte for byte).
func TestPrestagePlainBoot(t *testing.T) {
	u := newUpgrade(t, "", "status", "")
	before := metaHash(t, u.img)
	r := start(t, u.m)
	expect(t, r, "prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	handoff, _ := expect(t, r, "prestage", stepTimeout, regexp.MustCompile(`stagehand: handing off to /init after (\S+)`))
	v1 := expectTestOS(t, r, "boot", "v1", u.k1, meta.SlotA)
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+empty`))
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`stagehand-testos: step status: ok`))
	powerDown(t, r, "boot")
	t.Logf("power on to the test OS v1 in slot a: %s (prestage handed off after %s)", round(v1), handoff[1])

	if metaHash(t, u.img) != before {
		t.Errorf("a boot with nothing staged changed META:%s", lastReasons(status(t, u.img), 3))
	}
	if st := status(t, u.img); st.Slots.Phase != meta.PhaseIdle || st.Slots.Active != meta.SlotA || st.Slots.A.State != "good" {
		t.Errorf("META: %+v", st.Slots)
	}
	fsckESP(t, u.img)
}

// TestPrestageKexecUpgrade: v1 boots, its prestage applies the staged v2
// to slot B, arms the trial and kexecs into the generic kernel; v2's
// prestage counts the trial boot and hands off. No firmware ran between
// the apply and v2: the loader's variables are still those of v1's boot
// (LoaderEntrySelected names a's entry, the one-shot to b is still set,
// unconsumed) and b's entry still has both tries.
func TestPrestageKexecUpgrade(t *testing.T) {
	u := newUpgrade(t, "", "", "efivars,status")
	r := start(t, u.m)
	apply := applied(t, r)
	load, _ := expect(t, r, "kexec", stepTimeout, kexecLoad)
	into, kexecAt := expect(t, r, "kexec", stepTimeout, kexecInto)
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2 of slot b \(v2\)`))
	v2 := expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	got, _ := expect(t, r, "efivars", stepTimeout, efivarsLine)
	if d := cmp.Diff([]string{"stagehand-b[.+]*", "stagehand-a.conf", "none"}, got[1:]); d != "" {
		t.Errorf("efivars in v2 (oneshot, selected, bootcount) (-want, +got): a firmware pass would have consumed the one-shot and selected b:\n%s", d)
	}
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+trial, 1 tries left\s+v2`))
	powerDown(t, r, "v2")
	t.Logf("apply (META applying → trial) %s; kexec_file_load %s; prestage done after %s; kexec reboot (kexec into slot b → test OS v2) %s",
		round(apply), load[1], into[1], round(v2-kexecAt))

	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseTrial || sl.Trial != meta.SlotB || sl.TriesLeft != 1 || sl.Active != meta.SlotA ||
		sl.B.State != "trial" || sl.B.Version != "v2" || sl.A.State != "good" {
		t.Errorf("META after the kexec'd trial boot: %+v%s", sl, lastReasons(st, 4))
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got): b's try counter moved, so the loader booted it:\n%s", d)
	}
	fsckESP(t, u.img)
}

// TestPrestageConfirm: v2, kexec'd into, runs `stager confirm` and powers
// off; at the next power on (same firmware variables) the firmware boots
// slot B, whose prestage has nothing to do; confirming again is a no-op.
func TestPrestageConfirm(t *testing.T) {
	u := newUpgrade(t, "", "", "confirm,poweroff")
	staged := status(t, u.img).Staged
	if b := stageBytes(t, u.img, staged.Artifacts); bytes.Count(b, []byte{0}) == len(b) {
		t.Fatal("STAGE holds no payload before the boot")
	}
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: step confirm: ok`))
	powerDown(t, r, "v2")

	// Confirmed after a kexec: firmware start pending (apply's
	// pending.go), b's entry still counted, a the default.
	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA || sl.B.State != "good" || sl.Trial != "" || sl.Pending != meta.SlotB {
		t.Fatalf("META after confirm: %+v%s", sl, lastReasons(st, 4))
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries after confirm (-want, +got):\n%s", d)
	}
	// STAGE holds nothing META does not refer to: confirm cleared v2's bytes.
	if b := stageBytes(t, u.img, staged.Artifacts); bytes.Count(b, []byte{0}) != len(b) {
		t.Errorf("after confirm, %d of the %d bytes of the applied payload in STAGE are not zero", len(b)-bytes.Count(b, []byte{0}), len(b))
	}
	fsckESP(t, u.img)

	// The first cold boot: the firmware starts b once, its prestage
	// completes the blessing.
	r = start(t, u.m)
	expect(t, r, "cold boot: the blessing completed", bootTimeout, regexp.MustCompile(`slot b was started by the firmware: its blessing is complete`))
	expect(t, r, "cold boot: prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	cold := expectTestOS(t, r, "cold boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "cold boot: stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: slot b is already confirmed and the default`))
	powerDown(t, r, "cold boot")
	t.Logf("cold boot after confirm: power on to the test OS v2 in slot b %s", round(cold))

	st = status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA ||
		sl.B.State != "good" || sl.B.Version != "v2" || sl.A.State != "good" || st.Staged != nil || sl.Pending != "" || sl.LoaderDefault != meta.SlotB {
		t.Errorf("META after the cold boot: %+v, staged %+v%s", sl, st.Staged, lastReasons(st, 4))
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries after the cold boot (-want, +got):\n%s", d)
	}
	fsckESP(t, u.img)
}

// TestPrestagePanicRollback: v2 panics at every boot before it confirms
// (panic=1 resets the machine). The kexec'd boot spends one try, the
// firmware's boot-once the second; at the second reset the firmware boots
// slot A, whose prestage rolls the trial back; v1's `stager status` shows
// why.
func TestPrestagePanicRollback(t *testing.T) {
	u := newUpgrade(t, "", "status,efivars", "panic")
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "trial boot 1 (kexec)", "v2", u.k2, meta.SlotB)
	expect(t, r, "trial boot 1 (kexec)", stepTimeout, panicked)
	expect(t, r, "trial boot 2 (boot-once): prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 2 of 2`))
	expectTestOS(t, r, "trial boot 2 (boot-once)", "v2", u.k2, meta.SlotB)
	expect(t, r, "trial boot 2 (boot-once)", stepTimeout, panicked)
	got, _ := expect(t, r, "back on a: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot b\): rolled back: (.*)`))
	t.Logf("v1's prestage: rolled back: %s", got[1])
	expectTestOS(t, r, "back on a", "v1", u.k1, meta.SlotA)
	expectBackOnA(t, r, `bad\s+v2\s+slot b did not confirm`)
	if n := strings.Count(r.Console(), "Kernel panic - not syncing"); n != 2 {
		t.Errorf("%d panics, want 2", n)
	}

	st := status(t, u.img)
	sl := st.Slots
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotA || sl.Trial != "" || sl.A.State != "good" ||
		sl.B.State != "bad" || !strings.Contains(sl.B.Reason, "did not confirm") {
		t.Errorf("META after the rollback: %+v%s", sl, lastReasons(st, 5))
	}
	t.Logf("slot b: %s: %s", sl.B.State, sl.B.Reason)
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+1-1.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got): the loader counted b's boot-once try:\n%s", d)
	}
	fsckESP(t, u.img)
}

// TestPrestageNoKexec: stagehand.kexec=0 on slot A's command line. The
// apply is the same, but prestage reboots through the firmware, whose
// boot-once starts slot B (systemd-boot counting its try).
func TestPrestageNoKexec(t *testing.T) {
	u := newUpgrade(t, "stagehand.kexec=0", "", "efivars")
	r := start(t, u.m)
	apply := applied(t, r)
	expect(t, r, "firmware reboot", stepTimeout, regexp.MustCompile(`stagehand: stagehand.kexec=0: rebooting through the firmware, which boots slot b once`))
	_, rebootAt := expect(t, r, "firmware reboot", stepTimeout, regexp.MustCompile(`stagehand: rebooting through the firmware`))
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2`))
	v2 := expectTestOS(t, r, "boot-once", "v2", u.k2, meta.SlotB)
	got, _ := expect(t, r, "efivars", stepTimeout, efivarsLine)
	if d := cmp.Diff([]string{"none", "stagehand-b+2.conf", `\loader\entries\stagehand-b+1-1.conf`}, got[1:]); d != "" {
		t.Errorf("efivars in v2 (oneshot, selected, bootcount) (-want, +got):\n%s", d)
	}
	powerDown(t, r, "v2")
	t.Logf("apply %s; firmware reboot (rebooting through the firmware → test OS v2) %s", round(apply), round(v2-rebootAt))

	st := status(t, u.img)
	if sl := st.Slots; sl.Phase != meta.PhaseTrial || sl.Trial != meta.SlotB || sl.TriesLeft != 1 || sl.Active != meta.SlotA || sl.B.State != "trial" {
		t.Errorf("META: %+v%s", sl, lastReasons(st, 4))
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+1-1.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	fsckESP(t, u.img)
}
