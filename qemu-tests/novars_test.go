//go:build vm

package qemutests

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// noVarWrites on both slots' command lines: prestage and the test OS mount
// efivarfs read-only, as the kernel does on firmware without SetVariable
// at run time (a Raspberry Pi's), so every write of a variable fails with
// EROFS. (v2's goes in through its test OS steps, which end the command
// line of its image.)
const noVarWrites = "stagehand.efivars=ro"

var countedDefaultLine = regexp.MustCompile(`stagehand: the firmware takes no boot-once \(.*read-only file system\): slot b's counted entry is the bootloader's default`)

// armedByDefault checks that v1's prestage armed the trial by the counted
// default (logged before the trial's commit, which applied waits for).
func armedByDefault(t testing.TB, r *vm.Run) {
	t.Helper()
	if !countedDefaultLine.MatchString(r.Console()) {
		t.Errorf("v1's prestage did not say it armed the trial by its counted entry as the default (%s)", countedDefaultLine)
	}
}

// countedDefault checks that loader.conf's default of img is the counted
// default and that it resolves to want.
func countedDefault(t testing.TB, img string, want meta.Slot) {
	t.Helper()
	espOf(t, img, false, func(_ *fat.Volume, sb *systemdboot.Loader) {
		on, err := sb.CountedDefault(context.Background())
		if err != nil || !on {
			t.Errorf("loader.conf's default is not %q (%v)", systemdboot.CountedDefaultPattern, err)
		}
	})
	if def := defaultSlot(t, img); def != want {
		t.Errorf("the counted default picks slot %s, want %s", def, want)
	}
}

// TestNoVariableWrites: firmware that takes no variable writes at run time.
// The trial is armed without boot-once: slot b's counted entry becomes
// loader.conf's default ("stagehand-?[.+]*", which systemd-boot resolves to the
// first entry of its menu with tries left), the kexec tries it, and the
// confirm leaves it firmware start pending, to be blessed by the first
// boot that real systemd-boot starts by that default. A v2 that dies
// before its prestage is counted down by systemd-boot itself, which then
// boots slot a: no boot-once, no BootOrder write, no person.
func TestNoVariableWrites(t *testing.T) {
	t.Run("kexec, confirm, first cold boot blesses", func(t *testing.T) {
		u := newUpgrade(t, noVarWrites, "status,efivars,poweroff", "confirm,efivars,poweroff "+noVarWrites)
		r := start(t, u.m)
		applied(t, r)
		armedByDefault(t, r)
		expect(t, r, "kexec", stepTimeout, kexecInto)
		expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
		expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\), firmware start pending: the next reboot goes through the firmware into slot b by the bootloader's default`))
		powerDown(t, r, "v2")
		if sl := status(t, u.img).Slots; sl.Pending != meta.SlotB || sl.Active != meta.SlotB {
			t.Fatalf("META after confirm: %+v", sl)
		}
		countedDefault(t, u.img, meta.SlotB)
		if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+2.conf"}, entries(t, u.img)); d != "" {
			t.Errorf("entries after the kexec'd confirm (-want, +got):\n%s", d)
		}

		// The first cold boot: systemd-boot starts b by the default,
		// counting the try; b's prestage completes the blessing.
		r = start(t, u.m)
		expect(t, r, "b's prestage", bootTimeout, regexp.MustCompile(`stagehand: .*slot b was started by the firmware: its blessing is complete`))
		expectTestOS(t, r, "the first cold boot", "v2", u.k2, meta.SlotB)
		got, _ := expect(t, r, "efivars", stepTimeout, efivarsLine)
		if got[1] != "none" || got[2] != "stagehand-b+2.conf" && got[2] != "stagehand-b+1-1.conf" {
			t.Errorf("efivars at the cold boot: oneshot=%s selected=%s, want none and b's counted entry", got[1], got[2])
		}
		powerDown(t, r, "the first cold boot")
		st := status(t, u.img)
		if sl := st.Slots; sl.Active != meta.SlotB || sl.Pending != "" || sl.Phase != meta.PhaseIdle || sl.B.State != "good" {
			t.Fatalf("META after the cold boot: %+v%s", sl, lastReasons(st, 4))
		}
		if def := defaultSlot(t, u.img); def != meta.SlotB {
			t.Errorf("default after the blessing: %s", def)
		}
		if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b.conf"}, entries(t, u.img)); d != "" {
			t.Errorf("entries after the blessing (-want, +got):\n%s", d)
		}
		fsckESP(t, u.img)
	})

	t.Run("v2 dies early, systemd-boot gives it up", func(t *testing.T) {
		// rdinit= names no file: v2's kernel panics before any init, by
		// kexec and at each firmware start, and never reaches prestage.
		u := newUpgrade(t, noVarWrites, "status,efivars", "status "+noVarWrites+" rdinit=/missing")
		r := start(t, u.m)
		applied(t, r)
		armedByDefault(t, r)
		expect(t, r, "kexec", stepTimeout, kexecInto)
		noRoot := regexp.MustCompile(`Kernel panic - not syncing: VFS: Unable to mount root fs`)
		for i := range 1 + 2 { // the kexec, then one firmware start per try
			expect(t, r, "v2's panic", bootTimeout, noRoot)
			if i < 2 {
				expect(t, r, "the firmware starts b by the default", bootTimeout, regexp.MustCompile(`Linux version .*`))
			}
		}
		got, _ := expect(t, r, "back on a: prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → idle \(slot b\): rolled back: (.*)`))
		t.Logf("v1's prestage: rolled back: %s", got[1])
		if !strings.Contains(got[1], "after 2 firmware boot(s) of b that never reached its prestage") {
			t.Errorf("the rollback's reason: %s", got[1])
		}
		expectTestOS(t, r, "back on a", "v1", u.k1, meta.SlotA)
		expectBackOnA(t, r, `bad\s+v2\s+slot b did not confirm`)
		st := status(t, u.img)
		if sl := st.Slots; sl.Active != meta.SlotA || sl.Phase != meta.PhaseIdle || sl.B.State != "bad" {
			t.Fatalf("META after the rollback: %+v%s", sl, lastReasons(st, 4))
		}
		if def := defaultSlot(t, u.img); def != meta.SlotA {
			t.Errorf("default after the rollback: %s", def)
		}
		if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+0-2.conf"}, entries(t, u.img)); d != "" {
			t.Errorf("entries (-want, +got): systemd-boot counted b's two firmware starts:\n%s", d)
		}
		fsckESP(t, u.img)
	})
}
