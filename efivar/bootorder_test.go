package efivar

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBootOrder(t *testing.T) {
	d := Dir(t.TempDir())
	if got, err := BootOrder(d); err != nil || got != nil {
		t.Errorf("BootOrder of an unset variable = %v, %v; want none, nil", got, err)
	}
	order := []uint16{4, 5, 0, 0xabcd}
	if err := SetBootOrder(d, order); err != nil {
		t.Fatal(err)
	}
	a, data, err := d.Get("BootOrder", GlobalVendor)
	if want := []byte{4, 0, 5, 0, 0, 0, 0xcd, 0xab}; err != nil || a != 7 || string(data) != string(want) {
		t.Errorf("BootOrder holds %#x % x, %v; want 0x7 % x", a, data, err, want)
	}
	got, err := BootOrder(d)
	if d := cmp.Diff(order, got); err != nil || d != "" {
		t.Errorf("BootOrder: %v (-want, +got):\n%s", err, d)
	}
	if err := SetBootOrder(d, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Get("BootOrder", GlobalVendor); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SetBootOrder(nil) left BootOrder: %v", err)
	}
	d.Set("BootOrder", GlobalVendor, 7, []byte{1, 0, 2})
	if got, err := BootOrder(d); err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Errorf("BootOrder of 3 bytes = %v, %v", got, err)
	}
}

func TestBootOption(t *testing.T) {
	d := Dir(t.TempDir())
	o := LoadOption{Attributes: LoadOptionActive, Description: "stagehand", FilePath: DevicePath(mustFilePath(t, "a"))}
	if err := SetBootOption(d, 0xab, o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(string(d), "Boot00AB-"+GlobalVendor)); err != nil {
		t.Errorf("Boot#### not named in upper-case hex: %v", err)
	}
	got, err := BootOption(d, 0xab)
	if d := cmp.Diff(o, got); err != nil || d != "" {
		t.Errorf("BootOption: %v (-want, +got):\n%s", err, d)
	}
	if _, err := BootOption(d, 1); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "Boot0001") {
		t.Errorf("BootOption of an unset option: %v", err)
	}
	d.Set("Boot0002", GlobalVendor, 7, []byte{1, 0, 0, 0, 0, 0, 'a', 0})
	if _, err := BootOption(d, 2); err == nil || !strings.Contains(err.Error(), "Boot0002: load option description") {
		t.Errorf("BootOption of a malformed option: %v", err)
	}
	if err := SetBootOption(d, 3, LoadOption{Description: "\x00"}); err == nil || !strings.Contains(err.Error(), "Boot0003") {
		t.Errorf("SetBootOption with a NUL in the description: %v", err)
	}
	for _, tc := range []struct {
		name string
		n    uint16
		ok   bool
	}{
		{"Boot0000", 0, true}, {"BootFFFF", 0xffff, true}, {"Boot00AB", 0xab, true},
		{"Boot00ab", 0, false}, {"BootOrder", 0, false}, {"Boot000", 0, false}, {"Boot00000", 0, false}, {"boot0000", 0, false}, {"Boot+001", 0, false},
	} {
		if n, ok := parseBootName(tc.name); n != tc.n || ok != tc.ok {
			t.Errorf("parseBootName(%q) = %#x, %v; want %#x, %v", tc.name, n, ok, tc.n, tc.ok)
		}
	}
}

func TestList(t *testing.T) {
	d := Dir(t.TempDir())
	for _, name := range []string{"Boot0000", "BootOrder", "Boot0001"} {
		if err := d.Set(name, GlobalVendor, 7, []byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	d.Set("Boot0002", LoaderVendor, 7, []byte{1})                                       // another vendor
	os.WriteFile(filepath.Join(string(d), "Boot0003-"+GlobalVendor), nil, 0o644)        // unset
	os.WriteFile(filepath.Join(string(d), ".Boot0004-"+GlobalVendor), []byte{7}, 0o644) // temporary
	os.WriteFile(filepath.Join(string(d), "-"+GlobalVendor), []byte{7}, 0o644)          // no name
	os.Mkdir(filepath.Join(string(d), "Boot0005-"+GlobalVendor), 0o755)
	got, err := d.List(strings.ToUpper(GlobalVendor))
	slices.Sort(got)
	if d := cmp.Diff([]string{"Boot0000", "Boot0001", "BootOrder"}, got); err != nil || d != "" {
		t.Errorf("List: %v (-want, +got):\n%s", err, d)
	}
	if _, err := d.List("x"); err == nil {
		t.Error("List of a bad vendor succeeded")
	}
	if _, err := Dir(filepath.Join(string(d), "none")).List(GlobalVendor); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing directory: %v", err)
	}
}

func mustFilePath(t testing.TB, p string) []byte {
	t.Helper()
	b, err := FilePathNode(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
