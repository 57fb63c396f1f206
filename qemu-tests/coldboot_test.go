//go:build vm

package qemutests

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestColdBootRefusesPending: v2 is applied, kexec'd and confirmed (firmware
// start pending); then, before the first cold boot, slot b's kernel on the
// ESP is made unloadable for the firmware (its PE header broken, as a
// firmware that refuses it sees it). OVMF as shipped, its shell in the boot
// order: systemd-boot fails the boot-once entry and returns; the firmware
// starts systemd-boot again through stagehand's second load option, which
// boots the default, slot a, whose prestage rolls b back with the reason.
// No person at a prompt: the test only powers the machine on.
func TestColdBootRefusesPending(t *testing.T) {
	u := newUpgrade(t, "", "status,efivars,poweroff", "confirm,poweroff")
	r := start(t, u.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "the kexec'd boot", "v2", u.k2, meta.SlotB)
	expect(t, r, "stager confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\), firmware start pending`))
	powerDown(t, r, "v2")
	if sl := status(t, u.img).Slots; sl.Pending != meta.SlotB {
		t.Fatalf("META after confirm: %+v", sl)
	}

	withPartition(t, u.img, disk.LabelESP, true, func(p *disk.Region) {
		esp, err := fat.Open(p, p.Size)
		if err != nil {
			t.Fatal(err)
		}
		k, err := esp.ReadFile("stagehand/b/vmlinuz")
		if err != nil || !bytes.HasPrefix(k, []byte("MZ")) {
			t.Fatalf("slot b's kernel: %v", err)
		}
		copy(k, "XX") // no DOS header: the firmware's LoadImage refuses it
		if err := esp.WriteFile("stagehand/b/vmlinuz", bytes.NewReader(k)); err != nil {
			t.Fatal(err)
		}
		if err := esp.Sync(); err != nil {
			t.Fatal(err)
		}
	})

	r = start(t, u.m)
	expect(t, r, "systemd-boot fails slot b", bootTimeout, regexp.MustCompile(`Error loading \\stagehand\\b\\vmlinuz`))
	expect(t, r, "slot a's prestage rolls b back", bootTimeout, regexp.MustCompile(`slot b was confirmed after a kexec, but the firmware could not start it at the first cold boot`))
	expectTestOS(t, r, "back on a", "v1", u.k1, meta.SlotA)
	expectBackOnA(t, r, `bad\s+v2\s+slot b was confirmed after a kexec`)
	if strings.Contains(ansi.ReplaceAllString(r.Console(), ""), "Shell>") {
		t.Error("the firmware reached its shell's prompt")
	}
	st := status(t, u.img)
	if sl := st.Slots; sl.Active != meta.SlotA || sl.Pending != "" || sl.B.State != "bad" || sl.Phase != meta.PhaseIdle ||
		!strings.Contains(sl.B.Reason, "firmware could not start it at the first cold boot") {
		t.Fatalf("META after the cold boot: %+v%s", sl, lastReasons(st, 4))
	}
	fsckESP(t, u.img)

	// And it stays there: the next power-on boots a, settled.
	r = start(t, u.m)
	expect(t, r, "second power-on", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	expectTestOS(t, r, "second power-on", "v1", u.k1, meta.SlotA)
	powerDown(t, r, "second power-on")
}
