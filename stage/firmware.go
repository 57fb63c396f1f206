package stage

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/stagehand-dev/stagehand/authenticode"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// Firmware is what the firmware that will start the staged slot enforces:
// Secure Boot, and its signature databases. Under Secure Boot it refuses a
// UKI (or a Type #1 kernel) that db does not trust or dbx revokes; a
// kexec checks only the kernel inside, so such a slot would pass its trial
// and be refused at every cold boot. Staging checks it first.
type Firmware struct {
	SecureBoot bool
	DB, DBX    *authenticode.Database
	// sha256 of the variables' data, recorded with the check so that
	// prestage kexecs the payload only while they are unchanged.
	DBHash, DBXHash string
}

// ReadFirmware reads the Secure Boot state and databases from vars (this
// machine's efivarfs, or a copy of another machine's variables).
func ReadFirmware(vars efivar.Store) (*Firmware, error) {
	sb, err := efivar.SecureBoot(vars)
	if err != nil || !sb {
		return &Firmware{}, err
	}
	f := &Firmware{SecureBoot: true}
	for _, v := range []struct {
		name string
		db   **authenticode.Database
		hash *string
	}{{"db", &f.DB, &f.DBHash}, {"dbx", &f.DBX, &f.DBXHash}} {
		// Read once: parsed for the check, hashed as prestage hashes
		// it (efivar.SHA256: "" when unset).
		_, data, err := vars.Get(v.name, efivar.ImageSecurityVendor)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			*v.db = &authenticode.Database{}
			continue
		case err != nil:
			return nil, fmt.Errorf("reading the Secure Boot database %s: %w", v.name, err)
		}
		if *v.db, err = authenticode.ParseSignatureDatabase(data); err != nil {
			return nil, fmt.Errorf("the Secure Boot database %s: %w", v.name, err)
		}
		*v.hash = efivar.DataSHA256(data)
	}
	return f, nil
}

// ErrUntrusted marks a payload the firmware would refuse to start.
var ErrUntrusted = errors.New("the firmware would refuse it under Secure Boot")

// check verifies the payload's UKI, else its kernel, as the firmware will
// when it starts the slot. allow stages it anyway, recorded as untrusted
// (never kexec'd: the firmware is left to refuse it, and the trial rolls
// back).
func (f *Firmware) check(stage io.ReaderAt, arts []meta.Artifact, allow bool) (*meta.FirmwareCheck, error) {
	if f == nil || !f.SecureBoot {
		return nil, nil
	}
	a, ok := payload.Find(arts, payload.UKI)
	if !ok {
		if a, ok = payload.Find(arts, payload.Kernel); !ok {
			return nil, nil
		}
	}
	fc := &meta.FirmwareCheck{Trusted: true, DB: f.DBHash, DBX: f.DBXHash}
	if _, err := authenticode.Verify(io.NewSectionReader(stage, a.Offset, a.Size), a.Size, f.DB, f.DBX); err != nil {
		if !allow {
			return nil, fmt.Errorf("%w: its %s: %v; stage it anyway with --allow-untrusted (it is then never kexec'd, and the firmware's refusal rolls it back)", ErrUntrusted, a.Name, err)
		}
		fc.Trusted, fc.Reason = false, fmt.Sprintf("%s: %v", a.Name, err)
	}
	return fc, nil
}
