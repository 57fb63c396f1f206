package stage

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/authenticode"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/efivar"
)

// snakeoilFirmware is a firmware with Secure Boot on whose db holds the
// snakeoil certificate, as Debian's OVMF_VARS_4M.snakeoil.fd enrolls it.
func snakeoilFirmware(t *testing.T) *Firmware {
	t.Helper()
	b, err := os.ReadFile(boottest.SnakeoilCert)
	if err != nil {
		t.Fatalf("%v (Debian package ovmf: run make deps)", err)
	}
	p, _ := pem.Decode(b)
	db, err := (&authenticode.Database{Lists: []authenticode.SignatureList{{
		Type: authenticode.CertX509, Size: uint32(16 + len(p.Bytes)),
		Signatures: []authenticode.Signature{{Data: p.Bytes}},
	}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	vars := efivar.Dir(t.TempDir())
	const attrs = efivar.NonVolatile | efivar.BootServiceAccess | efivar.RuntimeAccess
	if err := vars.Set("SecureBoot", efivar.GlobalVendor, attrs, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := vars.Set("db", efivar.ImageSecurityVendor, attrs, db); err != nil {
		t.Fatal(err)
	}
	f, err := ReadFirmware(vars)
	if err != nil || !f.SecureBoot || f.DBHash == "" || f.DBXHash != "" {
		t.Fatalf("ReadFirmware = %+v, %v", f, err)
	}
	// The hash prestage compares it with (apply.Env.Databases).
	if h, err := efivar.SHA256(vars, "db", efivar.ImageSecurityVendor); err != nil || h != f.DBHash {
		t.Fatalf("db's hash at staging %s, at boot %s (%v)", f.DBHash, h, err)
	}
	return f
}

// ukiLayout writes an installer image holding a UKI, signed with the
// snakeoil key when signed, into an OCI layout, and returns its reference.
func ukiLayout(t *testing.T, signed bool) string {
	t.Helper()
	dir := t.TempDir()
	u := boottest.UKI(t, randomBytes(1, 300<<10), randomBytes(2, 100<<10), "console=ttyS0", "v2")
	if signed {
		key, cert := boottest.Snakeoil(t, dir)
		in, out := filepath.Join(dir, "in.efi"), filepath.Join(dir, "out.efi")
		if err := os.WriteFile(in, u, 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("sbsign", "--key", key, "--cert", cert, "--output", out, in).CombinedOutput(); err != nil {
			t.Fatalf("sbsign (Debian package sbsigntool: run make deps): %v: %s", err, b)
		}
		var err error
		if u, err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
	}
	img := imageOf(t, craftedLayer(t, regEntry("usr/install/amd64/vmlinuz.efi", u)))
	writeLayout(t, filepath.Join(dir, "layout"), img, "v2")
	return "oci:" + filepath.Join(dir, "layout") + ":v2"
}

// TestStageSecureBoot: under Secure Boot a UKI that db trusts is staged
// with its check recorded; one the firmware would refuse is refused with
// nothing changed on disk, or, with AllowUntrusted, staged as untrusted.
func TestStageSecureBoot(t *testing.T) {
	fw := snakeoilFirmware(t)
	t.Run("trusted", func(t *testing.T) {
		dsk := testDisk(t, 64<<20)
		res := stageOK(t, Options{Disk: dsk, Image: ukiLayout(t, true), Firmware: fw})
		fc := res.Staged.Firmware
		if fc == nil || !fc.Trusted || fc.DB != fw.DBHash || fc.DBX != "" {
			t.Fatalf("firmware check %+v", fc)
		}
	})
	t.Run("unsigned refused", func(t *testing.T) {
		dsk := testDisk(t, 64<<20)
		before := hashFile(t, dsk)
		_, err := Stage(context.Background(), Options{Disk: dsk, Image: ukiLayout(t, false), Firmware: fw})
		if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "not signed") || !strings.Contains(err.Error(), "--allow-untrusted") {
			t.Fatalf("Stage = %v, want ErrUntrusted naming why and --allow-untrusted", err)
		}
		if hashFile(t, dsk) != before {
			t.Error("a refused payload changed the disk")
		}
	})
	t.Run("unsigned allowed", func(t *testing.T) {
		dsk := testDisk(t, 64<<20)
		res := stageOK(t, Options{Disk: dsk, Image: ukiLayout(t, false), Firmware: fw, AllowUntrusted: true})
		if fc := res.Staged.Firmware; fc == nil || fc.Trusted || !strings.Contains(fc.Reason, "not signed") {
			t.Fatalf("firmware check %+v", fc)
		}
	})
	t.Run("secure boot off", func(t *testing.T) {
		dsk := testDisk(t, 64<<20)
		res := stageOK(t, Options{Disk: dsk, Image: ukiLayout(t, false), Firmware: &Firmware{}})
		if res.Staged.Firmware != nil {
			t.Fatalf("firmware check %+v with Secure Boot off", res.Staged.Firmware)
		}
	})
}
