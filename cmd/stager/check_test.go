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
	"github.com/stagehand-dev/stagehand/internal/reboot"
	"github.com/stagehand-dev/stagehand/meta"
)

// checkDir writes a check directory with required.d and wanted.d scripts.
func checkDir(t *testing.T, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range scripts {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCheck drives stager check on a slot on trial (META records the
// verdict; --reboot reboots on a failed required check), on a confirmed
// slot (nothing recorded, no reboot), and with a failed wanted check (a
// warning, then stager confirm goes on).
func TestCheck(t *testing.T) {
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
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} { // the apply, then the trial boot
		d, err := apply.Open(context.Background(), img, efivar.Dir(vars))
		if err != nil {
			t.Fatal(err)
		}
		d.Booted = slot
		_, err = apply.Boot(context.Background(), &d.Env)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	failing := checkDir(t, map[string]string{
		"required.d/10-ok":  "echo fine",
		"required.d/50-app": "echo starting app; echo app is not listening on :8080 >&2; exit 1",
		"wanted.d/10-ntp":   "true",
	})
	warning := checkDir(t, map[string]string{
		"required.d/10-ok": "echo fine",
		"wanted.d/10-ntp":  "echo clock not synchronized; exit 1",
	})
	var reboots []string
	// A fake machine: systemd's directory and systemctl under a root of
	// their own, the reboot recorded.
	sys := t.TempDir()
	os.MkdirAll(filepath.Join(sys, "run/systemd/system"), 0o755)
	os.MkdirAll(filepath.Join(sys, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(sys, "usr/bin/systemctl"), []byte("#!/bin/false\n"), 0o755)
	saved := thisMachine
	t.Cleanup(func() { thisMachine = saved })
	thisMachine = reboot.Machine{HostRoot: sys, Run: func(_ context.Context, _ string, argv []string) ([]byte, error) {
		reboots = append(reboots, strings.Join(argv, " "))
		return nil, nil
	}}
	flow := []string{"--disk", img, "--efivars", vars}
	for _, tc := range []struct {
		args    []string
		code    int
		out     []string
		reboots int
	}{
		{[]string{"check", "--dir", failing, "--slot", "b", "--reboot"}, 1, []string{
			"required check 10-ok passed",
			"required check 50-app (" + failing + "/required.d/50-app) failed after",
			"    starting app\n    app is not listening on :8080",
			"the trial slot is not healthy: rebooting (1 tries left; then the previous slot boots)",
			"stager: not healthy: required check 50-app failed (exit status 1): app is not listening on :8080",
		}, 1},
		{[]string{"status"}, 0, []string{"health checks of slot b (v2) failed, no confirm: required check 50-app failed"}, 0},
		{[]string{"check", "--dir", failing, "--slot", "a", "--reboot"}, 1, []string{"not rebooting: this slot is not on trial"}, 0},
		{[]string{"check", "--dir", warning, "--slot", "b", "--reboot"}, 0, []string{
			"warning: wanted check 10-ntp failed (exit status 1): clock not synchronized",
			"wanted check 10-ntp failed (exit status 1): clock not synchronized",
		}, 0},
		{[]string{"confirm", "--slot", "b"}, 0, []string{"confirmed slot b (v2)"}, 0},
		{[]string{"status"}, 0, []string{"health checks of slot b (v2) passed: wanted check 10-ntp failed"}, 0},
		{[]string{"check", "--dir", warning, "--timeout", "0s"}, 2, []string{"--timeout 0s: want a positive duration"}, 0},
	} {
		before := len(reboots)
		code, out, e := stager(t, append(tc.args, flow...)...)
		for _, want := range tc.out {
			if !strings.Contains(out+e, want) {
				t.Errorf("stager %s: output lacks %q:\n%s%s", strings.Join(tc.args, " "), want, out, e)
			}
		}
		if code != tc.code || len(reboots)-before != tc.reboots {
			t.Errorf("stager %s: exit %d, %d reboots; want exit %d, %d reboots\n%s%s", strings.Join(tc.args, " "), code, len(reboots)-before, tc.code, tc.reboots, out, e)
		}
	}
	if len(reboots) != 1 || reboots[0] != "/usr/bin/systemctl reboot" {
		t.Errorf("reboots: %q", reboots)
	}
}
