package systemdboot_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

func listing(t *testing.T, esp boot.FS, dirs ...string) []string {
	t.Helper()
	var out []string
	for _, d := range dirs {
		names, err := esp.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			out = append(out, d+"/"+n)
		}
	}
	return out
}

func fatESP(t *testing.T) boot.FS {
	f, err := os.Create(filepath.Join(t.TempDir(), "esp.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(260 << 20); err != nil {
		t.Fatal(err)
	}
	esp, err := fat.Format(f, 260<<20, boot.ESPLabel)
	if err != nil {
		t.Fatal(err)
	}
	return esp
}

// TestUKISlot: a slot as a Type #2 entry, through its whole life (install
// counted, boot once, the loader's count, bless, default, kexec's view of
// it), and the migrations between the kinds, on a directory and on the FAT
// prestage writes.
func TestUKISlot(t *testing.T) {
	ctx := context.Background()
	kernel := bytes.Repeat([]byte("bzImage!"), 40000)
	initrd := bytes.Repeat([]byte("cpio"), 30000)
	u := boottest.UKI(t, kernel, initrd, "console=ttyS0 quiet", "v2")
	for name, esp := range map[string]boot.FS{"dir": boot.Dir(t.TempDir()), "fat": fatESP(t)} {
		t.Run(name, func(t *testing.T) {
			vars := efivar.Dir(t.TempDir())
			sb := systemdboot.New(esp, systemdboot.WithEFIVars(vars))
			dirs := []string{"loader/entries", "EFI/Linux", "stagehand/a", "stagehand/b"}
			type1 := boot.Image{Kernel: strings.NewReader("k1"), Initramfs: strings.NewReader("i1"), Cmdline: "console=ttyS0", Version: "v1"}
			if err := sb.InstallSlot(ctx, meta.SlotA, type1); err != nil {
				t.Fatal(err)
			}
			type1.Kernel, type1.Initramfs = strings.NewReader("k1"), strings.NewReader("i1")
			if err := sb.InstallSlot(ctx, meta.SlotB, type1); err != nil {
				t.Fatal(err)
			}
			// Type #1 → UKI: the old entry and its files go.
			if err := sb.InstallSlot(ctx, meta.SlotB, boot.Image{UKI: bytes.NewReader(u), Tries: 2}); err != nil {
				t.Fatal(err)
			}
			want := []string{"loader/entries/stagehand-a.conf", "EFI/Linux/stagehand-b+2.efi", "stagehand/a/initramfs", "stagehand/a/vmlinuz"}
			if d := cmp.Diff(want, listing(t, esp, dirs...)); d != "" {
				t.Errorf("after installing a UKI in slot b (-want, +got):\n%s", d)
			}
			slots, err := sb.Slots(ctx)
			if err != nil || len(slots) != 2 {
				t.Fatalf("Slots: %v %v", slots, err)
			}
			wantB := boot.SlotEntry{Slot: meta.SlotB, Version: "v2", Cmdline: "stagehand.slot=b console=ttyS0 quiet", Kernel: "/EFI/Linux/stagehand-b+2.efi",
				UKI: true, Counting: true, Left: 2, Description: "EFI/Linux/stagehand-b+2.efi"}
			if d := cmp.Diff(wantB, slots[1]); d != "" {
				t.Errorf("slot b (-want, +got):\n%s", d)
			}
			// What kexec loads: the UKI's sections.
			k, i, e, err := sb.ReadSlot(ctx, meta.SlotB)
			if err != nil || !bytes.Equal(k, kernel) || !bytes.Equal(i, initrd) || e.Cmdline != wantB.Cmdline {
				t.Errorf("ReadSlot: %d/%d kernel bytes, %d/%d initramfs bytes, %q, %v", len(k), len(kernel), len(i), len(initrd), e.Cmdline, err)
			}
			if err := sb.SetBootOnce(ctx, meta.SlotB); err != nil {
				t.Fatal(err)
			}
			if slot, ok, err := sb.BootOnce(ctx); slot != meta.SlotB || !ok || err != nil {
				t.Errorf("BootOnce = %s %v %v", slot, ok, err)
			}
			// The loader counts a try (renames it), then the system blesses it.
			if err := esp.Rename("EFI/Linux/stagehand-b+2.efi", "EFI/Linux/stagehand-b+1-1.efi"); err != nil {
				t.Fatal(err)
			}
			if err := sb.SetDefault(ctx, meta.SlotB); err != nil {
				t.Fatal(err)
			}
			if def, err := sb.Default(ctx); def != meta.SlotB || err != nil {
				t.Errorf("Default = %s %v", def, err)
			}
			if err := sb.Bless(ctx, meta.SlotB); err != nil {
				t.Fatal(err)
			}
			if got := listing(t, esp, "EFI/Linux"); !cmp.Equal(got, []string{"EFI/Linux/stagehand-b.efi"}) {
				t.Errorf("after Bless: %v", got)
			}
			// UKI → Type #1 in slot b, Type #1 → UKI in slot a.
			type1.Kernel, type1.Initramfs = strings.NewReader("k3"), strings.NewReader("i3")
			if err := sb.InstallSlot(ctx, meta.SlotB, type1); err != nil {
				t.Fatal(err)
			}
			if err := sb.InstallSlot(ctx, meta.SlotA, boot.Image{UKI: bytes.NewReader(u)}); err != nil {
				t.Fatal(err)
			}
			want = []string{"loader/entries/stagehand-b.conf", "EFI/Linux/stagehand-a.efi", "stagehand/b/initramfs", "stagehand/b/vmlinuz"}
			if d := cmp.Diff(want, listing(t, esp, dirs...)); d != "" {
				t.Errorf("after the migrations back (-want, +got):\n%s", d)
			}
			// Refused: a UKI naming a slot, a file that is no UKI, both kinds
			// at once. The slot is left without an entry (as after any
			// failed install: the apply marks it bad first), and nothing
			// half-written is listed.
			for _, tc := range []struct {
				name string
				img  boot.Image
				msg  string
			}{
				{"slot in cmdline", boot.Image{UKI: bytes.NewReader(boottest.UKI(t, kernel, nil, "stagehand.slot=a", "v9"))}, "stagehand.slot=a"},
				{"not a UKI", boot.Image{UKI: strings.NewReader(strings.Repeat("x", 5000))}, "not a PE/COFF"},
				{"both kinds", boot.Image{UKI: bytes.NewReader(u), Kernel: strings.NewReader("k")}, "one or the other"},
			} {
				err := sb.InstallSlot(ctx, meta.SlotA, tc.img)
				if err == nil || !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("%s: InstallSlot = %v, want %q", tc.name, err, tc.msg)
				}
				for _, n := range listing(t, esp, "EFI/Linux") {
					if n != "EFI/Linux/stagehand-a.efi" || tc.name != "both kinds" {
						t.Errorf("%s: %s left on the ESP", tc.name, n)
					}
				}
			}
		})
	}
}

// TestBootedSlot: the slot systemd-boot says it booted, from
// LoaderEntrySelected, for entries of both kinds and both ID rules.
func TestBootedSlot(t *testing.T) {
	ctx := context.Background()
	vars := efivar.Dir(t.TempDir())
	sb := systemdboot.New(boot.Dir(t.TempDir()), systemdboot.WithEFIVars(vars))
	for _, tc := range []struct {
		selected string
		want     meta.Slot
	}{
		{"", ""},
		{"stagehand-b+1-1.efi", meta.SlotB},
		{"stagehand-b.efi", meta.SlotB},
		{"Stagehand-A.EFI", meta.SlotA},
		{"stagehand-a+2.conf", meta.SlotA},
		{"stagehand-c.efi", ""},
		{"debian.conf", ""},
		{"auto-windows", ""},
	} {
		if tc.selected == "" {
			vars.Remove(systemdboot.SelectedVar, efivar.LoaderVendor)
		} else if err := efivar.SetString(vars, systemdboot.SelectedVar, efivar.LoaderVendor, efivar.BootServiceAccess|efivar.RuntimeAccess, tc.selected); err != nil {
			t.Fatal(err)
		}
		slot, ok, err := sb.BootedSlot(ctx)
		if err != nil || slot != tc.want || ok != (tc.want != "") {
			t.Errorf("LoaderEntrySelected %q: BootedSlot = %q %v %v, want %q", tc.selected, slot, ok, err, tc.want)
		}
	}
}

// TestUKISigned: a slot's entry says whether its UKI carries a signature
// (what prestage checks before a kexec under Secure Boot): one signed with
// sbsign does, the same UKI unsigned does not.
func TestUKISigned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	unsigned := filepath.Join(dir, "v2.efi")
	if err := os.WriteFile(unsigned, boottest.UKI(t, bytes.Repeat([]byte("bzImage!"), 4000), []byte("cpio"), "console=ttyS0", "v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	key, cert := boottest.Snakeoil(t, dir)
	signed := filepath.Join(dir, "v2.signed.efi")
	if out, err := exec.Command("sbsign", "--key", key, "--cert", cert, "--output", signed, unsigned).CombinedOutput(); err != nil {
		t.Fatalf("sbsign (Debian package sbsigntool, run make deps): %v: %s", err, out)
	}
	for _, tc := range []struct {
		file string
		want bool
	}{{unsigned, false}, {signed, true}} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			b, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			sb := systemdboot.New(boot.Dir(t.TempDir()), systemdboot.WithEFIVars(efivar.Dir(t.TempDir())))
			if err := sb.InstallSlot(ctx, meta.SlotB, boot.Image{UKI: bytes.NewReader(b), Tries: 2}); err != nil {
				t.Fatal(err)
			}
			f, err := sb.OpenSlot(ctx, meta.SlotB)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Entry.Signed != tc.want || !f.Entry.UKI {
				t.Errorf("slot b's entry: UKI %v, Signed %v; want a UKI, Signed %v", f.Entry.UKI, f.Entry.Signed, tc.want)
			}
		})
	}
}
