package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestReboot: stager --reboot asks systemd when it runs, else the init
// system's reboot command (so that file systems are unmounted: a reboot(2)
// with the ESP mounted leaves it dirty), and calls reboot(2) only without
// either or as PID 1. Nothing here reboots: every way out is a fake.
func TestReboot(t *testing.T) {
	dir := t.TempDir()
	systemd := filepath.Join(dir, "run-systemd-system")
	cmd := filepath.Join(dir, "sbin-reboot")
	os.WriteFile(cmd, []byte("#!/bin/false\n"), 0o755)
	notExec := filepath.Join(dir, "not-executable")
	os.WriteFile(notExec, nil, 0o644)
	for _, tc := range []struct {
		name    string
		systemd bool
		cmds    []string
		pid     int
		want    []string
		stderr  string
	}{
		{"systemd", true, []string{cmd}, 1234, []string{"systemctl reboot"}, "rebooting through systemd"},
		{"reboot command", false, []string{filepath.Join(dir, "missing"), notExec, cmd}, 1234, []string{cmd}, "rebooting through the init system (" + cmd + ")"},
		{"no init system", false, []string{filepath.Join(dir, "missing")}, 1234, []string{"reboot(2)"}, "rebooting"},
		{"PID 1", false, []string{cmd}, 1, []string{"reboot(2)"}, "rebooting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(systemd)
			if tc.systemd {
				os.Mkdir(systemd, 0o755)
			}
			var got []string
			r := rebooter{
				systemdDir: systemd,
				rebootCmds: tc.cmds,
				run: func(_ context.Context, name string, args ...string) ([]byte, error) {
					got = append(got, strings.Join(append([]string{name}, args...), " "))
					return nil, nil
				},
				syscall: func() error { got = append(got, "reboot(2)"); return nil },
				pid:     tc.pid,
			}
			var stderr strings.Builder
			if err := r.reboot(context.Background(), &stderr); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("reboot ran (-want, +got):\n%s", d)
			}
			if strings.TrimSpace(stderr.String()) != tc.stderr {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
		})
	}
	r := rebooter{systemdDir: systemd, rebootCmds: []string{cmd}, pid: 2,
		run: func(context.Context, string, ...string) ([]byte, error) {
			return []byte("no"), errors.New("exit status 1")
		},
		syscall: func() error { t.Fatal("reboot(2) after a failed reboot command"); return nil }}
	os.RemoveAll(systemd)
	if err := r.reboot(context.Background(), &strings.Builder{}); err == nil || !strings.Contains(err.Error(), cmd) {
		t.Errorf("a failing reboot command: %v", err)
	}
}
