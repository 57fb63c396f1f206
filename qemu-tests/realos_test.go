//go:build vm

package qemutests

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/realos"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// The real OS scenarios: each slot holds a Debian kernel and an initramfs
// with prestage, the real OS's init and its root image (Debian bookworm
// with systemd, a squashfs built by package realos, cached under
// build/realos), as `stager initramfs build --base` would make it.
// stagehand.realos.steps= names what the test driver in the OS does once
// the health checks and the confirm have run (qemu-tests/realos/layer/driver).

// realOSCmdline is the start of every real OS slot's command line.
const realOSCmdline = "rdinit=/prestage console=ttyS0 panic=5"

// Real OS boots take longer than the test OS's: systemd starts some
// thirty units under TCG.
const realOSBootTimeout = 4 * time.Minute

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
	var b strings.Builder
	if _, err := base.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	pre := initramfs.New()
	if err := pre.AddPrestage(initramfs.PrestageOptions{Binary: buildStatic(t, "./cmd/prestage"), Modules: mods, Names: prestageModules}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initramfs-"+flavor+"-"+version)
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	if _, err := initramfs.Append(bw, []byte(b.String()), pre); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
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
	expect(t, r, what, stepTimeout, regexp.MustCompile(`realos: powering off`))
	expect(t, r, what, poweroffTimeout, regexp.MustCompile(`reboot: Power down`))
	if err := r.Wait(poweroffTimeout); err != nil {
		t.Fatalf("%s: QEMU after power off: %v", what, err)
	}
	for _, l := range realOSTrouble.FindAllString(ansi.ReplaceAllString(r.Console(), ""), -1) {
		t.Errorf("%s: %s", what, l)
	}
}

// TestRealOSPlainBoot: a fresh disk whose slot A holds the real OS on the
// cloud kernel. OVMF, systemd-boot, the kernel, prestage (nothing staged:
// it hands off), the real OS's init (squashfs root under an overlay,
// switch_root), systemd up to boot-complete.target through the health
// checks, the confirm unit (slot a is confirmed already), and the driver:
// the units' states, stager status and the early-boot stagehand: lines
// of this boot from journalctl -k -b, then systemctl poweroff.
func TestRealOSPlainBoot(t *testing.T) {
	checkHost(t)
	k := kernel(t, "cloud")
	img := filepath.Join(t.TempDir(), "disk.img")
	_, err := boot.InitDisk(context.Background(), img, boot.DiskConfig{
		Layout:    testLayout(),
		Kernel:    k.Vmlinuz,
		Initramfs: realOSInitramfs(t, "cloud", "v1"),
		Cmdline:   realOSCmdline + " stagehand.realos.steps=units,status,kmsg,poweroff",
		Version:   "v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	before := metaHash(t, img)
	r := start(t, newMachine(t, img))
	expect(t, r, "prestage", realOSBootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	handoff, _ := expect(t, r, "prestage", stepTimeout, regexp.MustCompile(`stagehand: handing off to /init after (\S+)`))
	expect(t, r, "the real OS's init", stepTimeout, regexp.MustCompile(`realos-init: switching to systemd`))
	booted := expectRealOS(t, r, "boot", "v1", k, meta.SlotA)
	got, _ := expect(t, r, "units", stepTimeout, realOSUnits)
	if got[1] != "active" || got[2] != "active" || got[3] != "active" {
		t.Errorf("units: check %s, confirm %s, boot-complete.target %s; want all active", got[1], got[2], got[3])
	}
	expect(t, r, "stager status", stepTimeout, regexp.MustCompile(`realos: status: slot a:\s+good\s+v1`))
	expect(t, r, "journalctl -k -b", stepTimeout, regexp.MustCompile(`realos: kmsg: .*stagehand: handing off to /init`))
	realOSPowerDown(t, r, "boot")
	t.Logf("power on to the real OS's driver %s (prestage handed off after %s); power off after %s", round(booted), handoff[1], round(r.Elapsed()))
	if metaHash(t, img) != before {
		t.Errorf("a boot with nothing staged changed META:%s", lastReasons(status(t, img), 3))
	}
	fsckESP(t, img)
}
