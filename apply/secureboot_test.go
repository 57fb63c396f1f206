package apply_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestSecureBootFirmwareOnly: under Secure Boot a trial is kexec'd only
// when its payload was checked at staging against the db and dbx the
// firmware holds now; else it goes through the firmware (boot-once set),
// which checks it itself.
func TestSecureBootFirmwareOnly(t *testing.T) {
	for _, tc := range []struct {
		name   string
		check  *meta.FirmwareCheck
		db     string
		action apply.Action
		why    string
	}{
		{"not checked at staging", nil, "h1", apply.Reboot, "was not checked against db and dbx"},
		{"checked, unchanged", &meta.FirmwareCheck{Trusted: true, DB: "h1", DBX: "h2"}, "h1", apply.Kexec, ""},
		{"checked, db changed since", &meta.FirmwareCheck{Trusted: true, DB: "h1", DBX: "h2"}, "h3", apply.Reboot, "db or dbx changed"},
		{"staged untrusted", &meta.FirmwareCheck{Trusted: false, Reason: "vmlinuz.efi: not signed", DB: "h1", DBX: "h2"}, "h1", apply.Reboot, "--allow-untrusted (vmlinuz.efi: not signed)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := applytest.New(t)
			if tc.check != nil {
				store, d, err := disk.OpenMETA(context.Background(), m.Img, true)
				if err != nil {
					t.Fatal(err)
				}
				err = store.Update(func(b *meta.Block) error {
					st, _, err := b.Staged()
					if err != nil {
						return err
					}
					st.Firmware = tc.check
					return b.SetStaged(st)
				})
				d.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			m.Firmware()
			dk := m.Open(meta.SlotA)
			dk.SecureBoot = true
			dk.Databases = func() (string, string, error) { return tc.db, "h2", nil }
			d, err := apply.Boot(context.Background(), &dk.Env)
			dk.Close()
			if err != nil || d.Action != tc.action || d.Slot != meta.SlotB || !strings.Contains(d.Reason, tc.why) {
				t.Fatalf("Boot = %+v, %v; want %s into b (%q)", d, err, tc.action, tc.why)
			}
			if sl := m.Slots(); sl.Phase != meta.PhaseTrial {
				t.Fatalf("%+v", sl)
			}
		})
	}
}

// TestTPMSealedFirmwareOnly: where the OS keeps a secret sealed to the
// TPM's measurements, the trial goes through the firmware, never by kexec,
// and the reason says why; Secure Boot or not.
func TestTPMSealedFirmwareOnly(t *testing.T) {
	m := applytest.New(t)
	m.Firmware()
	dk := m.Open(meta.SlotA)
	dk.TPMSealed = func() (string, error) { return "disk.img partition 5 (root)", nil }
	d, err := apply.Boot(context.Background(), &dk.Env)
	dk.Close()
	if err != nil || d.Action != apply.Reboot || d.Slot != meta.SlotB || !strings.Contains(d.Reason, "partition 5 (root) holds a LUKS2 volume with a systemd-tpm2 token") {
		t.Fatalf("Boot = %+v, %v; want a firmware reboot into b naming the sealed volume", d, err)
	}
	// The firmware starts b (boot-once), whose boot is its trial's.
	if s := m.Firmware(); s != meta.SlotB {
		t.Fatalf("the firmware starts %s", s)
	}
	if d := m.Prestage(meta.SlotB); d.Action != apply.Continue {
		t.Fatalf("%+v", d)
	}
	if _, err := m.Confirm(meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if sl := m.Slots(); sl.Pending != "" {
		t.Fatalf("a trial the firmware started is pending: %+v", sl)
	}
	m.CheckSettled(meta.SlotB)
}
