package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
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
		{[]string{"rollback", "--slot", "b"}, 0, "slot a (v1) is the default now"},
		{[]string{"status"}, 0, "rolled back by stager rollback from slot b to slot a"},
		{[]string{"confirm"}, 1, "not booted from a stagehand slot"},
	} {
		code, out, e := stager(t, append(tc.args, flow...)...)
		if code != tc.code || !strings.Contains(out+e, tc.out) {
			t.Errorf("stager %s: exit %d\n%s%s\nwant exit %d and %q", strings.Join(tc.args, " "), code, out, e, tc.code, tc.out)
		}
	}
}
