package main

import (
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/meta"
)

func TestKexecAllowed(t *testing.T) {
	for _, tc := range []struct {
		name       string
		secureBoot bool
		entry      boot.SlotEntry
		refused    bool
	}{
		{"type 1", true, boot.SlotEntry{}, false},
		{"signed UKI", true, boot.SlotEntry{UKI: true, Signed: true}, false},
		{"unsigned UKI", true, boot.SlotEntry{UKI: true, Description: "EFI/Linux/stagehand-b+2.efi"}, true},
		{"unsigned UKI, no Secure Boot", false, boot.SlotEntry{UKI: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := kexecAllowed(tc.secureBoot, meta.SlotB, tc.entry)
			if (err != nil) != tc.refused {
				t.Fatalf("kexecAllowed = %v, want refused %v", err, tc.refused)
			}
			if err != nil && !strings.Contains(err.Error(), "slot b's UKI EFI/Linux/stagehand-b+2.efi is not signed and Secure Boot is on") {
				t.Errorf("refusal %q does not say why", err)
			}
		})
	}
}
