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

	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// TestLargePayload: a 128 MiB slot (Debian's kernel and v2's initramfs
// padded with zeros) that neither path may be able to boot on a small
// machine. Whatever path the upgrade takes, the machine settles, by power-ons
// alone, on v1 in slot a or on v2 confirmed in slot b, and then boots that
// slot from cold: never a machine that cannot cold-boot.
//
// In a 384 MiB VM prestage streams the payload, but kexec_file_load's
// copies of it (about three times its size) do not fit, nor can OVMF with
// systemd-boot 252 load it (the EFI stub's Out of Resources; see
// docs/performance.md): the machine ends on v1. In 1 GiB the kexec fits
// (640 MiB do not: prestage reboots through the firmware, which starts v2),
// v2 is confirmed firmware start pending, and the firmware's first start of
// its 128 MiB blesses it.
func TestLargePayload(t *testing.T) {
	for _, memoryMB := range []int{384, 1024} {
		t.Run(fmt.Sprintf("%d MiB", memoryMB), func(t *testing.T) { largePayload(t, memoryMB) })
	}
}

func largePayload(t *testing.T, memoryMB int) {
	u := newUpgrade(t, "", "status,poweroff", "")
	dir := t.TempDir()
	v2, err := os.ReadFile(slotInitramfs(t, "generic", "v2"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.Stat(u.k2.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel skips zeros between archives: v2 still unpacks to what
	// it was.
	const payload = 128 << 20
	padded := filepath.Join(dir, "initramfs-v2-128MiB")
	if err := os.WriteFile(padded, append(v2, make([]byte, payload-int(k.Size())-len(v2))...), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := "oci:" + filepath.Join(dir, "images") + ":v2"
	hostStager(t, "image", "build", "--kernel", u.k2.Vmlinuz, "--initramfs", padded,
		"--cmdline", slotCmdline+" stagehand.testos.steps=confirm,poweroff", "--version", "v2", "--output", layout)
	t.Logf("%s", strings.TrimSpace(hostStager(t, "--image", layout, "--disk", u.img)))
	m := newMachineWith(t, vm.Config{Disk: u.img, MemoryMB: memoryMB})

	// The paths a boot may take, as the console shows them.
	marks := []struct{ what, re string }{
		{"kexec into b", `stagehand: kexec into slot b`},
		{"firmware reboot", `stagehand: rebooting through the firmware`},
		{"systemd-boot's error", `(Error loading|Failed to execute) .*`},
		{"out of resources", `Out of [Rr]esources`},
		{"v2 confirmed", `stagehand-testos: stager confirm: confirmed slot b`},
		{"blessing completed", `stagehand: .*its blessing is complete`},
		{"rolled back", `stagehand: .*rolled back: .*`},
	}
	var path []string
	settled := false
	for run := 1; run <= 4 && !settled; run++ {
		r := start(t, m)
		if _, err := r.Expect(context.Background(), settleTimeout, powerDownLine); err != nil {
			t.Fatalf("power-on %d: %v", run, err)
		}
		if err := r.Wait(poweroffTimeout); err != nil {
			t.Fatalf("power-on %d: QEMU after power off: %v", run, err)
		}
		con := ansi.ReplaceAllString(r.Console(), "")
		var saw []string
		for _, mk := range marks {
			if l := regexp.MustCompile(mk.re).FindString(con); l != "" {
				saw = append(saw, fmt.Sprintf("%s (%q)", mk.what, short(l, 160)))
			}
		}
		path = append(path, fmt.Sprintf("power-on %d: %s", run, strings.Join(saw, ", ")))
		sl := status(t, u.img).Slots
		settled = sl.Phase == meta.PhaseIdle && sl.Trial == "" && sl.Pending == ""
	}
	t.Logf("the upgrade's path:\n%s", strings.Join(path, "\n"))
	st := status(t, u.img)
	sl := st.Slots
	want := map[meta.Slot]string{meta.SlotA: "v1", meta.SlotB: "v2"}
	as := sl.State(sl.Active)
	if !settled || as.State != "good" || as.Version != want[sl.Active] {
		t.Fatalf("not settled on v1 in a or v2 in b after 4 power-ons: %+v%s", sl, lastReasons(st, 5))
	}
	t.Logf("settled on %s in slot %s; slot %s: %s %s", as.Version, sl.Active, sl.Active.Other(), sl.State(sl.Active.Other()).State, sl.State(sl.Active.Other()).Reason)

	// From cold, the settled slot boots, with nothing left to do.
	r := start(t, m)
	expect(t, r, "the cold boot's prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	k1 := u.k1
	if sl.Active == meta.SlotB {
		k1 = u.k2
	}
	expectTestOS(t, r, "the cold boot", as.Version, k1, sl.Active)
	if sl.Active == meta.SlotB {
		// v2's steps confirm (already) and power off.
		expect(t, r, "v2's confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: slot b is already confirmed`))
	}
	powerDown(t, r, "the cold boot")
	fsckESP(t, u.img)
}

// short cuts s to at most n bytes.
func short(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
