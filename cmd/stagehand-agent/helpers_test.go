package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/internal/reboot"
)

// fakeHost makes a host root with systemd (its directory and systemctl)
// and makes the agent record its reboots instead of running them: each as
// the root it would chroot into and the command.
func fakeHost(t *testing.T, systemd bool) (root string, reboots *[]string) {
	t.Helper()
	root = t.TempDir()
	if systemd {
		for _, d := range []string{"run/systemd/system", "usr/bin"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, "usr/bin/systemctl"), []byte("#!/bin/false\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	reboots = new([]string)
	saved := machine
	t.Cleanup(func() { machine = saved })
	machine = func(hostRoot string) reboot.Machine {
		return reboot.Machine{
			HostRoot: hostRoot,
			Run: func(_ context.Context, root string, argv []string) ([]byte, error) {
				*reboots = append(*reboots, "chroot "+root+" "+strings.Join(argv, " "))
				return nil, nil
			},
			Syscall: func() error { t.Error("reboot(2) called"); return nil },
		}
	}
	return root, reboots
}

// agent runs stagehand-agent with args and checks its exit code and that
// want is in stdout, or in the one last line of stderr when it failed.
func agent(t *testing.T, code int, want string, args ...string) (stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	got := run(context.Background(), args, &out, &errb)
	if got != code {
		t.Fatalf("stagehand-agent %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, &out, &errb)
	}
	s := out.String()
	if code != 0 {
		lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
		s = lines[len(lines)-1]
		if !strings.HasPrefix(s, "stagehand-agent: ") {
			t.Errorf("last line of stderr %q", s)
		}
	}
	if !strings.Contains(s, want) {
		t.Fatalf("%q does not say %q\nstderr: %s", s, want, &errb)
	}
	return out.String(), errb.String()
}

func writeKubeconfig(t *testing.T, server string) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"" + server + "\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
