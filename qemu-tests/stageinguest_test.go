//go:build vm

package qemutests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// imagesDisk makes an ext4 image (mkfs.ext4 -d, e2fsprogs) holding the
// tree of dir, for the guest's second disk.
func imagesDisk(t testing.TB, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("mkfs.ext4 is missing (e2fsprogs): %s", "run 'make deps' as root, or apt-get install e2fsprogs")
	}
	var size int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			size += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "images.ext4")
	mib := size>>20*2 + 32
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "images", "-d", dir, img, fmt.Sprintf("%dM", mib)).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4 -d %s: %v\n%s", dir, err, out)
	}
	return img
}

// TestScenarioStageInGuest: the seed's case. v1 runs with its ESP mounted
// read-write by the kernel's vfat, a file on it held open for writing and
// loader.conf for reading; it mounts a second disk (ext4) holding v2's
// installer image as an OCI layout and runs `stager --image
// oci:/mnt/images:v2 --disk /dev/vda --reboot`. The stage writes only
// STAGE and META, so the open files are no obstacle. stager reboots
// through the init system's reboot command (the test OS, as busybox's
// init: it closes the files, unmounts and reboots); the firmware starts
// slot A, whose prestage applies v2 with nothing mounted and kexecs into
// it. The ESP comes out clean: a reboot(2) with it mounted would leave
// the vfat dirty bit set, which fsck.fat -n reports.
func TestScenarioStageInGuest(t *testing.T) {
	checkHost(t)
	tree := t.TempDir()
	buildV2(t, filepath.Join(tree, "images"), "status,confirm")
	images := imagesDisk(t, tree)
	const ref = "oci:/mnt/images:v2"

	u := &upgrade{k1: kernel(t, "cloud"), k2: kernel(t, "generic")}
	u.img = filepath.Join(t.TempDir(), "disk.img")
	_, err := bootdisk.Init(context.Background(), u.img, bootdisk.Config{
		Layout:    testLayout(),
		Kernel:    u.k1.Vmlinuz,
		Initramfs: slotInitramfs(t, "cloud", "v1"),
		Cmdline:   slotCmdline + " stagehand.testos.steps=esp-hold,mount-images,stage-reboot:" + ref,
		Version:   "v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	u.m = newMachine(t, u.img, "-drive", "if=none,id=images,format=raw,readonly=on,file="+vm.OptValue(images), "-device", "virtio-blk-pci,drive=images")

	r := start(t, u.m)
	expectTestOS(t, r, "v1", "v1", u.k1, meta.SlotA)
	got, _ := expect(t, r, "esp-hold", stepTimeout, regexp.MustCompile(`stagehand-testos: esp: (.*)`))
	t.Logf("test OS: esp: %s", got[1])
	expect(t, r, "mount-images", stepTimeout, regexp.MustCompile(`stagehand-testos: images: mounted /dev/vdb`))
	got, stagedAt := expect(t, r, "stager --image in the guest", stepTimeout,
		regexp.MustCompile(`stagehand-testos: stager --image: (staged oci:/mnt/images:v2 \(sha256:[0-9a-f]+\) for slot b.*)`))
	t.Logf("stager in the guest: %s", got[1])
	expect(t, r, "stager --reboot", stepTimeout, regexp.MustCompile(`stagehand-testos: stager --image: rebooting through the init system \(/sbin/reboot\)`))
	got, _ = expect(t, r, "the test OS as init", stepTimeout, regexp.MustCompile(`stagehand-testos: init: reboot requested: (closing 2 held files, unmounting \[/boot/efi /mnt\])`))
	t.Logf("test OS: init: %s", got[1])
	_, applyAt := expect(t, r, "the reboot: v1's prestage", bootTimeout, toApplying)
	expect(t, r, "the reboot: v1's prestage", bootTimeout, toTrial)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager status in v2", stepTimeout, regexp.MustCompile(`stagehand-testos: stager status: slot b:\s+trial, 1 tries left\s+v2`))
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	powerDown(t, r, "v2")
	if n := strings.Count(r.Console(), "BdsDxe: starting"); n != 2 {
		t.Errorf("the firmware started %d times, want 2 (power on, stager --reboot)", n)
	}
	t.Logf("staged in the guest after %s; the reboot reached the apply after %s; power off after %s", round(stagedAt), round(applyAt-stagedAt), round(r.Elapsed()))

	st := status(t, u.img)
	sl := st.Slots
	if sl.Phase != meta.PhaseIdle || sl.Active != meta.SlotB || sl.Previous != meta.SlotA || sl.B.State != "good" || sl.B.Version != "v2" || st.Staged != nil || sl.Pending != meta.SlotB {
		t.Errorf("META: %+v, staged %+v%s", sl, st.Staged, lastReasons(st, 5))
	}
	var stagedFrom string
	for _, x := range st.Transitions {
		if x.To == meta.PhaseStaged {
			stagedFrom = x.Reason
		}
	}
	if !strings.HasPrefix(stagedFrom, "staged "+ref+" ") {
		t.Errorf("META records the stage as %q, want it from %s", stagedFrom, ref)
	}
	espOf(t, u.img, false, func(esp *fat.Volume, _ *systemdboot.Loader) {
		b, err := esp.ReadFile(HeldFileOnESP)
		if err != nil || !strings.HasPrefix(string(b), "held open by the test OS") {
			t.Errorf("%s on the ESP: %q, %v", HeldFileOnESP, b, err)
		}
	})
	// Confirmed after the kexec: firmware start pending, b still counted.
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2.conf"}, entries(t, u.img)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	fsckESP(t, u.img)
}

// HeldFileOnESP is the file the test OS's esp-hold step keeps open.
const HeldFileOnESP = "held-open.txt"

// TestScenarioStageDeltaInGuest: delta staging on a node. v1 runs from
// slot a; its v2 (the same kernel, v1's initramfs with v2's version and
// steps) is an installer image with a delta index in an OCI layout on a
// second disk. `stager --image` in the guest cuts v1's slot files on the
// ESP (read from /dev/vda while the kernel's vfat has the ESP mounted),
// copies the chunks they share with v2's layer, their hashes checked, and
// reads only the rest from the layout's blob; the payload is verified by
// its digest as any other. At the reboot v1's prestage applies it and
// kexecs into v2, which confirms itself.
func TestScenarioStageDeltaInGuest(t *testing.T) {
	checkHost(t)
	tree := t.TempDir()
	k1 := kernel(t, "cloud")
	out := hostStager(t, "image", "build", "--kernel", k1.Vmlinuz, "--initramfs", slotInitramfs(t, "cloud", "v2"),
		"--cmdline", slotCmdline+" stagehand.testos.steps=status,confirm", "--version", "v2", "--output", "oci:"+filepath.Join(tree, "images")+":v2")
	t.Logf("%s", strings.TrimSpace(out))
	images := imagesDisk(t, tree)
	const ref = "oci:/mnt/images:v2"

	img := filepath.Join(t.TempDir(), "disk.img")
	_, err := bootdisk.Init(context.Background(), img, bootdisk.Config{
		Layout:    testLayout(),
		Kernel:    k1.Vmlinuz,
		Initramfs: slotInitramfs(t, "cloud", "v1"),
		Cmdline:   slotCmdline + " stagehand.testos.steps=esp-hold,mount-images,stage-reboot:" + ref,
		Version:   "v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := newMachine(t, img, "-drive", "if=none,id=images,format=raw,readonly=on,file="+vm.OptValue(images), "-device", "virtio-blk-pci,drive=images")
	r := start(t, m)
	expectTestOS(t, r, "v1", "v1", k1, meta.SlotA)
	expect(t, r, "mount-images", stepTimeout, regexp.MustCompile(`stagehand-testos: images: mounted /dev/vdb`))
	got, _ := expect(t, r, "the delta's plan", stepTimeout,
		regexp.MustCompile(`stagehand-testos: stager --image: delta: ([0-9.]+ [KMG]?i?B) of ([0-9.]+ [KMG]?i?B) from this machine, ([0-9.]+ [KMG]?i?B) to fetch in (\d+) ranges`))
	t.Logf("delta: %s of %s from slot a, %s to fetch in %s ranges", got[1], got[2], got[3], got[4])
	got, _ = expect(t, r, "stager --image in the guest", stepTimeout,
		regexp.MustCompile(`stagehand-testos: stager --image: delta: fetched ([0-9.]+ [KMG]?i?B), took ([0-9.]+ [KMG]?i?B) from this machine`))
	expect(t, r, "the reboot: v1's prestage", bootTimeout, toTrial)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", k1, meta.SlotB)
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	powerDown(t, r, "v2")

	st := status(t, img)
	if sl := st.Slots; sl.Active != meta.SlotB || sl.B.State != "good" || sl.B.Version != "v2" {
		t.Errorf("META: %+v%s", sl, lastReasons(st, 5))
	}
	// What the stager said, from META's staged record (gone with the
	// apply) is checked by its own numbers: most of the slot reused.
	fetched, reused := parseBytes(t, got[1]), parseBytes(t, got[2])
	if reused < 4*fetched {
		t.Errorf("delta fetched %s and reused %s: want most of v2 taken from slot a", got[1], got[2])
	}
	fsckESP(t, img)
}

// parseBytes reads a size as the stager prints it ("3.4 MiB").
func parseBytes(t testing.TB, s string) float64 {
	t.Helper()
	var v float64
	var unit string
	if _, err := fmt.Sscanf(s, "%g %s", &v, &unit); err != nil {
		t.Fatalf("size %q: %v", s, err)
	}
	for i, u := range []string{"B", "KiB", "MiB", "GiB"} {
		if u == unit {
			for range i {
				v *= 1024
			}
			return v
		}
	}
	t.Fatalf("size %q: unknown unit", s)
	return 0
}
