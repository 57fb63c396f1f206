package apply_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/meta"
)

// espEntries lists the entries of both kinds on the machine's ESP.
func espEntries(t *testing.T, m *applytest.Machine) []string {
	t.Helper()
	dk := m.Open("")
	defer dk.Close()
	entries, err := dk.Loader.Slots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Description)
	}
	return out
}

// TestUKIMigration: v1 in a Type #1 entry, v2 staged as a UKI is applied as
// a counted Type #2 entry, kexec'd with its own command line and the slot,
// confirmed (blessed); a cold boot of it, whose command line names no slot,
// is known from LoaderEntrySelected; v3, a kernel and initramfs again, goes
// back to a Type #1 entry in slot a; and a UKI trial that never confirms is
// rolled back.
func TestUKIMigration(t *testing.T) {
	ctx := context.Background()
	m := applytest.NewDisk(t, "v1")
	v2 := m.StageUKI("v2")
	if s := m.Firmware(); s != meta.SlotA {
		t.Fatalf("first boot starts slot %s", s)
	}
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("decision %+v, want kexec into b", d)
	}
	if d := cmp.Diff([]string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b+2.efi"}, espEntries(t, m)); d != "" {
		t.Fatalf("entries after the apply (-want, +got):\n%s", d)
	}
	if sl := m.Slots(); sl.B.State != "trial" || sl.B.Version != "v2" {
		t.Fatalf("slot b: %+v", sl.B)
	}
	// What prestage kexecs: the UKI's kernel and initramfs, its command
	// line with the slot.
	dk := m.Open(meta.SlotA)
	f, err := dk.Loader.OpenSlot(ctx, meta.SlotB)
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(f.UKI)
	k, _ := io.ReadAll(f.Kernel)
	f.Close()
	dk.Close()
	k2, _ := m.Inputs("v2")
	want, _ := readFile(k2)
	if !bytes.Equal(whole, v2) || !bytes.Equal(k, want) || f.Entry.Cmdline != "stagehand.slot=b console=ttyS0 rdinit=/prestage" {
		t.Errorf("slot b: UKI %d/%d bytes, kernel %d/%d bytes, command line %q", len(whole), len(v2), len(k), len(want), f.Entry.Cmdline)
	}
	m.CheckESP()
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("trial boot: %+v", d)
	}
	if _, err := m.Confirm(meta.SlotB); err != nil {
		t.Fatal(err)
	}
	// Confirmed after a kexec: firmware start pending, the UKI counted.
	if d := cmp.Diff([]string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b+2.efi"}, espEntries(t, m)); d != "" {
		t.Fatalf("entries after confirm (-want, +got):\n%s", d)
	}
	// A cold boot through the firmware: no stagehand.slot= on the command
	// line; systemd-boot's LoaderEntrySelected says b, and its prestage
	// completes the blessing.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("cold boot starts slot %s", s)
	}
	if d := m.Prestage(""); d.Action != apply.Continue {
		t.Fatalf("first cold boot of the UKI: %+v", d)
	}
	if d := cmp.Diff([]string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b.efi"}, espEntries(t, m)); d != "" {
		t.Fatalf("entries after the first cold boot (-want, +got):\n%s", d)
	}
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("second cold boot starts slot %s", s)
	}
	if d := m.Prestage(""); d.Action != apply.Continue || d.Reason != "nothing staged" {
		t.Fatalf("second cold boot of the UKI: %+v", d)
	}
	if sl := m.Slots(); sl.Active != meta.SlotB || sl.Phase != meta.PhaseIdle {
		t.Fatalf("after the cold boot: %+v", sl)
	}

	// Back to Type #1: v3 is a kernel and an initramfs, for slot a.
	m.StageVersion("v3")
	m.Firmware()
	if d := m.Prestage(""); d.Action != apply.Kexec || d.Slot != meta.SlotA {
		t.Fatalf("applying v3 from the UKI slot: %+v", d)
	}
	if d := m.Prestage(meta.SlotA); d.Action != apply.Continue {
		t.Fatalf("trial boot of v3: %+v", d)
	}
	if _, err := m.Confirm(meta.SlotA); err != nil {
		t.Fatal(err)
	}
	if s := m.Firmware(); s != meta.SlotA { // completes v3's blessing
		t.Fatalf("first cold boot after v3 starts slot %s", s)
	}
	if d := m.Prestage(meta.SlotA); d.Action != apply.Continue {
		t.Fatalf("first cold boot of v3: %+v", d)
	}
	if d := cmp.Diff([]string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b.efi"}, espEntries(t, m)); d != "" {
		t.Fatalf("entries after v3 (-want, +got):\n%s", d)
	}

	// A UKI trial in slot b that panics before it confirms: the firmware
	// boots it once (boot-once), then the default, slot a, whose prestage
	// rolls it back.
	m.StageUKI("v4")
	m.Firmware()
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("applying v4: %+v", d)
	}
	if s := m.Firmware(); s != meta.SlotB { // the kexec'd v4 panicked; reset
		t.Fatalf("boot-once starts slot %s", s)
	}
	if s := m.Firmware(); s != meta.SlotA { // v4 panicked again
		t.Fatalf("after boot-once the firmware starts slot %s", s)
	}
	if d := m.Prestage(meta.SlotA); d.Action != apply.Continue || !strings.Contains(d.Reason, "did not confirm") {
		t.Fatalf("back on a: %+v", d)
	}
	if sl := m.Slots(); sl.Active != meta.SlotA || sl.B.State != "bad" {
		t.Fatalf("after the rollback: %+v", sl)
	}
	m.CheckESP()
}

// TestUKIRefused: an installer image whose UKI is not one, or names a slot
// in its command line, is refused by the stager, the disk image unchanged.
func TestUKIRefused(t *testing.T) {
	m := applytest.NewDisk(t, "v1")
	k, _ := m.Inputs("v2")
	kb, _ := readFile(k)
	before := applytest.HashFile(t, m.Img)
	for _, tc := range []struct {
		name string
		u    []byte
		msg  string
	}{
		{"bad", []byte(strings.Repeat("MZ not a PE", 1000)), "/usr/install/amd64/vmlinuz.efi: not a PE/COFF EFI image"},
		{"slot", applytest.UKIBytes(t, kb, nil, "console=ttyS0 stagehand.slot=b", "v2"), "stagehand.slot=b: a UKI serves either slot"},
	} {
		err := m.TryStageUKI(tc.name, tc.u)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.msg)
		}
	}
	if applytest.HashFile(t, m.Img) != before {
		t.Error("a refused stage changed the disk image")
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

// TestUKIRefusedByFirmware: a UKI trial the firmware starts (counting its
// try) but that never reaches its prestage, and the machine back on slot a:
// the rollback says why, naming Secure Boot when the firmware enforces it
// and the UKI carries no signature.
func TestUKIRefusedByFirmware(t *testing.T) {
	for _, tc := range []struct {
		name       string
		secureBoot bool
		why        string
	}{
		{"no secure boot", false, "(the firmware did not load it (out of memory, an image it refuses) or it failed early: panic, reset or hang)"},
		{"secure boot", true, "(Secure Boot is on and its UKI is not signed: the firmware refuses to start it)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := applytest.NewDisk(t, "v1")
			m.StageUKI("v2")
			m.Firmware()
			if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
				t.Fatalf("applying v2: %+v", d)
			}
			// No kexec (prestage refuses an unsigned UKI under Secure
			// Boot): the firmware boot-once starts b and refuses it; a
			// reset, and the default a boots.
			if s := m.Firmware(); s != meta.SlotB {
				t.Fatalf("boot-once starts slot %s", s)
			}
			if s := m.Firmware(); s != meta.SlotA {
				t.Fatalf("after the refused boot the firmware starts slot %s", s)
			}
			d := m.Open(meta.SlotA)
			d.SecureBoot = tc.secureBoot
			dec, err := apply.Boot(context.Background(), &d.Env)
			d.Close()
			if err != nil || dec.Action != apply.Continue {
				t.Fatalf("back on a: %+v, %v", dec, err)
			}
			want := "slot b did not confirm: the machine came back to slot a after 1 firmware boot(s) of b that never reached its prestage " + tc.why
			if sl := m.Slots(); sl.B.State != "bad" || sl.B.Reason != want || sl.Active != meta.SlotA {
				t.Errorf("after the rollback: slot b %+v, active %s; want bad with %q", sl.B, sl.Active, want)
			}
		})
	}
}

// TestUKIConfirmFirmwareBoot: a UKI trial booted by the firmware (kexec
// unavailable) runs with no stagehand.slot= on its command line; stager
// confirm knows the slot from the entry systemd-boot says it booted, as
// prestage does. Before, it refused ("not booted from a stagehand slot")
// and such a trial could never be confirmed.
func TestUKIConfirmFirmwareBoot(t *testing.T) {
	m := applytest.NewDisk(t, "v1")
	m.StageUKI("v2")
	m.Firmware()
	if d := m.Prestage(meta.SlotA); d.Action != apply.Kexec || d.Slot != meta.SlotB {
		t.Fatalf("applying v2: %+v", d)
	}
	if s := m.Firmware(); s != meta.SlotB { // kexec unavailable: boot-once
		t.Fatalf("boot-once starts slot %s", s)
	}
	if d := m.Prestage(""); d.Action != apply.Continue || !strings.Contains(d.Reason, "trial boot of slot b") {
		t.Fatalf("trial boot: %+v", d)
	}
	res, err := m.Confirm("")
	if err != nil || res.Slot != meta.SlotB || !res.Changed {
		t.Fatalf("Confirm with no slot on the command line = %+v, %v; want slot b confirmed", res, err)
	}
	if sl := m.Slots(); sl.Active != meta.SlotB || sl.B.State != "good" || sl.Phase != meta.PhaseIdle {
		t.Errorf("after confirm: %+v", sl)
	}
	if d := cmp.Diff([]string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b.efi"}, espEntries(t, m)); d != "" {
		t.Errorf("entries after confirm (-want, +got):\n%s", d)
	}
}
