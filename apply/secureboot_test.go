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
			dk.SecureBoot, dk.DB, dk.DBX = true, tc.db, "h2"
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
