package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// TestConfirmAndRollback drives stager disk init, --image, confirm, status
// and rollback on an image file, with EFI variables in a directory and the
// pre-stage step run in-process between them.
func TestConfirmAndRollback(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	vars := t.TempDir()
	k1 := boottest.FakeKernel(t, dir, "6.1.0-one", 1<<20)
	k2 := boottest.FakeKernel(t, dir, "6.1.0-two", 1<<20+5)
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(initrd, []byte(strings.Repeat("initramfs", 1000)), 0o644)
	layout := "oci:" + filepath.Join(dir, "layout") + ":v2"
	for _, args := range [][]string{
		{"disk", "init", "--disk", img, "--size", "600M", "--stage-size", "64M", "--kernel", k1, "--initramfs", initrd, "--version", "v1"},
		{"image", "build", "--kernel", k2, "--initramfs", initrd, "--version", "v2", "--output", layout},
		{"--image", layout, "--disk", img},
	} {
		if code, out, e := stager(t, args...); code != 0 {
			t.Fatalf("stager %s: %d %s %s", strings.Join(args, " "), code, out, e)
		}
	}
	prestage := func(slot meta.Slot) apply.Decision {
		d, err := apply.Open(context.Background(), img, efivar.Dir(vars))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		d.Booted = slot
		dec, err := apply.Boot(context.Background(), &d.Env)
		if err != nil {
			t.Fatal(err)
		}
		return dec
	}
	if d := prestage(meta.SlotA); d.Action != apply.Kexec {
		t.Fatalf("apply: %+v", d)
	}
	prestage(meta.SlotB)
	flow := []string{"--disk", img, "--efivars", vars}
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"confirm", "--slot", "a"}, 1, "slot b is on trial but this system booted from slot a"},
		{[]string{"status"}, 0, "trial, 1 tries left"},
		{[]string{"confirm", "--slot", "b"}, 0, "confirmed slot b (v2): it is the default now; slot a is kept for rollback"},
		{[]string{"confirm", "--slot", "b"}, 0, "slot b is already confirmed"},
		{[]string{"status"}, 0, "slot b:   good  v2  [entry loader/entries/stagehand-b.conf"},
		{[]string{"status", "--slot", "a"}, 0, "WARNING: this system booted slot a, but META's active slot is b (v2, good)"},
		{[]string{"rollback", "--slot", "b"}, 0, "slot a (v1) is the default now"},
		{[]string{"status"}, 0, "rolled back by stager rollback from slot b to slot a"},
		{[]string{"confirm"}, 1, "not booted from a stagehand slot"},
		{[]string{"status", "--slot", "x"}, 2, `--slot "x": give a or b`},
	} {
		code, out, e := stager(t, append(tc.args, flow...)...)
		if code != tc.code || !strings.Contains(out+e, tc.out) {
			t.Errorf("stager %s: exit %d\n%s%s\nwant exit %d and %q", strings.Join(tc.args, " "), code, out, e, tc.code, tc.out)
		}
	}
	// Booted from b, which is no longer active (a person picked it, say):
	// status says so on its first line, and in its JSON.
	code, out, e := stager(t, append([]string{"status", "--slot", "b"}, flow...)...)
	if first, _, _ := strings.Cut(out, "\n"); code != 0 || !strings.HasPrefix(first, "WARNING: this system booted slot b, but META's active slot is a (v1, good)") {
		t.Errorf("status on b after the rollback: exit %d, first line %q%s", code, first, e)
	}
	code, out, e = stager(t, append([]string{"status", "--slot", "b", "--json"}, flow...)...)
	var js struct {
		Booted    meta.Slot `json:"booted"`
		OffActive string    `json:"off_active"`
	}
	if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || js.Booted != meta.SlotB || !strings.Contains(js.OffActive, "META's active slot is a") {
		t.Errorf("status --json on b: exit %d, %+v, %v%s", code, js, err, e)
	}
	code, out, _ = stager(t, append([]string{"status", "--slot", "a"}, flow...)...)
	if code != 0 || strings.Contains(out, "WARNING") {
		t.Errorf("status on a, the active slot: %s", out)
	}
}

// TestDiskInitInstall makes a disk from an installer image: slot a takes
// the image's kernel, initramfs, command line and version.
func TestDiskInitInstall(t *testing.T) {
	dir := t.TempDir()
	k := boottest.FakeKernel(t, dir, "6.1.0-inst", 1<<20)
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(initrd, []byte(strings.Repeat("initramfs", 1000)), 0o644)
	layout := "oci:" + filepath.Join(dir, "layout") + ":v9"
	if code, _, e := stager(t, "image", "build", "--kernel", k, "--initramfs", initrd, "--version", "v9", "--cmdline", "console=ttyS0 quiet", "--output", layout); code != 0 {
		t.Fatal(e)
	}
	img := filepath.Join(dir, "disk.img")
	code, out, e := stager(t, "disk", "init", "--disk", img, "--size", "600M", "--stage-size", "64M", "--install", layout)
	if code != 0 || !strings.Contains(out, "slot a (version v9, kernel 6.1.0-inst)") {
		t.Fatalf("disk init --install: %d %q %q", code, out, e)
	}
	code, out, _ = stager(t, "status", "--disk", img)
	if code != 0 || !strings.Contains(out, "slot a:   good  v9") {
		t.Errorf("status:\n%s", out)
	}
	l, err := apply.ReadLoader(context.Background(), img, nil)
	if err != nil || len(l.Entries) != 1 || !strings.Contains(l.Entries[0].Cmdline, "console=ttyS0 quiet") {
		t.Errorf("loader %+v, %v", l, err)
	}
	for _, bad := range [][]string{
		{"disk", "init", "--disk", img + "2", "--install", layout, "--kernel", k},
		{"disk", "init", "--disk", img + "2", "--install", "not a ref!"},
	} {
		if code, _, e := stager(t, bad...); code != 2 {
			t.Errorf("stager %s: %d %q", strings.Join(bad, " "), code, e)
		}
	}
}

// TestStatusBootedFromLoader: with no stagehand.slot= on the command line
// (a UKI booted by the firmware), stager status names the slot whose entry
// systemd-boot says it booted; with neither, it says it does not know.
func TestStatusBootedFromLoader(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	vars := t.TempDir()
	k := boottest.FakeKernel(t, dir, "6.1.0-one", 1<<20)
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(initrd, []byte(strings.Repeat("initramfs", 1000)), 0o644)
	if code, out, e := stager(t, "disk", "init", "--disk", img, "--size", "600M", "--stage-size", "64M", "--kernel", k, "--initramfs", initrd, "--version", "v1"); code != 0 {
		t.Fatalf("stager disk init: %d %s %s", code, out, e)
	}
	for _, tc := range []struct {
		selected string // LoaderEntrySelected; "" unset
		want     string
		prom     string // in stager status --prometheus -
	}{
		{"", "booted:   unknown (no stagehand.slot= on the kernel command line, and the bootloader names no stagehand entry)", `stagehand_info{slot="a",`},
		{"stagehand-b.efi", "booted:   b\n", `stagehand_info{slot="b",`},
		{"debian.conf", "booted:   unknown", `stagehand_info{slot="a",`},
	} {
		d := efivar.Dir(vars)
		if err := d.Remove(systemdboot.SelectedVar, efivar.LoaderVendor); err != nil {
			t.Fatal(err)
		}
		if tc.selected != "" {
			if err := efivar.SetString(d, systemdboot.SelectedVar, efivar.LoaderVendor, efivar.BootServiceAccess|efivar.RuntimeAccess, tc.selected); err != nil {
				t.Fatal(err)
			}
		}
		code, out, e := stager(t, "status", "--disk", img, "--efivars", vars)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("LoaderEntrySelected %q: status exit %d\n%s%s\nwant %q", tc.selected, code, out, e, tc.want)
		}
		// The metrics name the running slot the same way.
		code, out, e = stager(t, "status", "--disk", img, "--efivars", vars, "--prometheus", "-")
		if code != 0 || !strings.Contains(out, tc.prom) {
			t.Errorf("LoaderEntrySelected %q: status --prometheus exit %d\n%s%s\nwant %q", tc.selected, code, out, e, tc.prom)
		}
	}
}
