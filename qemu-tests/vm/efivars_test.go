//go:build vm

package vm

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/stagehand-dev/stagehand/authenticode"
	"github.com/stagehand-dev/stagehand/efivar"
)

// TestSecureBootVariables: the snakeoil OVMF's db, read out of its
// variable store, holds the snakeoil certificate, and SecureBoot is 1.
func TestSecureBootVariables(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Dir: dir, Disk: disk, Firmware: OVMFSecureBoot})
	if err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(dir, "efivars")
	os.Mkdir(vars, 0o755)
	if err := m.SecureBootVariables(vars); err != nil {
		t.Fatal(err)
	}
	if sb, err := efivar.SecureBoot(efivar.Dir(vars)); err != nil || !sb {
		t.Fatalf("SecureBoot = %v, %v", sb, err)
	}
	db, err := authenticode.ReadDatabase(efivar.Dir(vars), "db")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/usr/share/ovmf/PkKek-1-snakeoil.pem")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pem.Decode(b)
	snakeoil, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if c := db.Certificates(); len(c) != 1 || !c[0].Equal(snakeoil) {
		t.Fatalf("db holds %d certificates, want the snakeoil one", len(c))
	}
}
