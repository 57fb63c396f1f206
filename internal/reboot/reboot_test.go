package reboot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// host makes a host root in a temporary directory: files are created
// executable, "->" makes a symbolic link, a name ending in / a directory.
func host(t *testing.T, files ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, f := range files {
		name, link, isLink := strings.Cut(f, " -> ")
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case isLink:
			err = os.Symlink(link, p)
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		default:
			err = os.WriteFile(p, []byte("#!/bin/false\n"), 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestHostRoot: with a host root, every way to reboot is looked up inside
// it (links too) and run chrooted into it; with no init system to ask,
// Reboot refuses with ErrNoInit and never calls reboot(2).
func TestHostRoot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		want  []string // root-relative argv run; nil: refused
		log   string
	}{
		{"systemd", []string{"run/systemd/system/", "usr/bin/systemctl", "sbin/reboot -> /usr/bin/systemctl"}, []string{"/usr/bin/systemctl", "reboot"}, "rebooting through systemd"},
		{"reboot command only", []string{"bin/busybox", "sbin/reboot -> /bin/busybox"}, []string{"/sbin/reboot"}, "rebooting through the init system (/sbin/reboot)"},
		{"systemd directory without systemctl", []string{"run/systemd/system/", "usr/sbin/reboot"}, []string{"/usr/sbin/reboot"}, "rebooting through the init system (/usr/sbin/reboot)"},
		{"neither", []string{"run/", "sbin/reboot -> /nonexistent/busybox", "usr/sbin/reboot/"}, nil, ""},
		{"reboot not executable", []string{"etc/os-release"}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := host(t, tc.files...)
			if tc.name == "reboot not executable" {
				os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
				os.WriteFile(filepath.Join(root, "sbin/reboot"), nil, 0o644)
			}
			var ran []string
			var gotRoot string
			m := Machine{
				HostRoot: root,
				Run: func(_ context.Context, r string, argv []string) ([]byte, error) {
					gotRoot, ran = r, argv
					return nil, nil
				},
				Syscall: func() error { t.Fatal("reboot(2) with a host root"); return nil },
				PID:     1234,
			}
			var log []string
			err := m.Reboot(context.Background(), func(f string, a ...any) { log = append(log, fmt.Sprintf(f, a...)) })
			if tc.want == nil {
				if !errors.Is(err, ErrNoInit) || ran != nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), root) {
					t.Fatalf("err %v, ran %v", err, ran)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, ran); d != "" || gotRoot != root {
				t.Errorf("ran in %s (-want, +got):\n%s", gotRoot, d)
			}
			if len(log) != 1 || log[0] != tc.log {
				t.Errorf("log %q, want %q", log, tc.log)
			}
		})
	}
}

// TestThisSystem: without a host root, the reboot command is looked up in
// this system: systemctl where systemd runs, else reboot(2) as PID 1's way.
func TestThisSystem(t *testing.T) {
	want := "reboot(2)"
	if _, err := os.Stat(systemdDir); err == nil {
		want = "systemd (systemctl reboot)"
	}
	for _, tc := range []struct {
		name string
		pid  int
		want string
	}{
		{"PID 1", 1, want},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Machine{PID: tc.pid}.Find()
			if err != nil || w.String() != tc.want {
				t.Fatalf("%v %v, want %s", w, err, tc.want)
			}
		})
	}
}

// TestFailingCommand: a reboot command that fails is an error naming it,
// never followed by reboot(2).
func TestFailingCommand(t *testing.T) {
	root := host(t, "sbin/reboot")
	m := Machine{HostRoot: root,
		Run: func(context.Context, string, []string) ([]byte, error) {
			return []byte("no\n"), errors.New("exit status 1")
		},
		Syscall: func() error { t.Fatal("reboot(2) after a failed reboot command"); return nil }}
	if err := m.Reboot(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "chroot "+root+" /sbin/reboot") {
		t.Errorf("a failing reboot command: %v", err)
	}
}

// TestRunIn runs a real command chrooted into a host root when allowed
// (root), as Reboot does.
func TestRunIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("chroot needs root: run the tests as root, as make test does")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "probe"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runIn(context.Background(), root, []string{"/probe", "-test.run", "^$"})
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("%v: %s", err, out)
	}
}
