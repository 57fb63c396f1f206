package health

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// tree writes files (path relative to the root → shell script body; "" an
// empty file, "->X" a symlink to X, "-x BODY" a file that is not
// executable) and returns the root.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, body := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasPrefix(body, "->"):
			err = os.Symlink(body[2:], full)
		case strings.HasPrefix(body, "-x "):
			err = os.WriteFile(full, []byte("#!/bin/sh\n"+body[3:]+"\n"), 0o644)
		case body == "":
			err = os.WriteFile(full, nil, 0o755)
		default:
			err = os.WriteFile(full, []byte("#!/bin/sh\n"+body+"\n"), 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

type got struct {
	Name, Kind, Error, Output string
	OK                        bool
}

func summarize(rep *Report) []got {
	var out []got
	for _, x := range rep.Results {
		out = append(out, got{Name: x.Name, Kind: string(x.Kind), Error: x.Error, Output: x.Output, OK: x.OK})
	}
	return out
}

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string // under dir 0
		over    map[string]string // under dir 1, which takes precedence
		timeout time.Duration
		want    []got
		healthy bool
		summary string
	}{{
		name:    "none",
		healthy: true,
		summary: "0 health checks passed",
	}, {
		name: "all pass, in name order, required first",
		files: map[string]string{
			"wanted.d/10-w":   "echo wanted ran",
			"required.d/20-b": "echo b",
			"required.d/10-a": "echo a; echo to stderr >&2",
		},
		want: []got{
			{Name: "10-a", Kind: "required", OK: true, Output: "a\nto stderr"},
			{Name: "20-b", Kind: "required", OK: true, Output: "b"},
			{Name: "10-w", Kind: "wanted", OK: true, Output: "wanted ran"},
		},
		healthy: true,
		summary: "3 health checks passed",
	}, {
		name: "a required failure does not stop the others",
		files: map[string]string{
			"required.d/10-disk": "echo checking disk; echo disk full >&2; exit 3",
			"required.d/20-net":  "echo ok",
			"wanted.d/10-ntp":    "echo ntp ok",
		},
		want: []got{
			{Name: "10-disk", Kind: "required", Error: "exit status 3", Output: "checking disk\ndisk full"},
			{Name: "20-net", Kind: "required", OK: true, Output: "ok"},
			{Name: "10-ntp", Kind: "wanted", OK: true, Output: "ntp ok"},
		},
		summary: "required check 10-disk failed (exit status 3): disk full",
	}, {
		name: "a wanted failure is healthy",
		files: map[string]string{
			"required.d/10-ok": "true",
			"wanted.d/50-ntp":  "echo clock not synchronized; exit 1",
		},
		want: []got{
			{Name: "10-ok", Kind: "required", OK: true},
			{Name: "50-ntp", Kind: "wanted", Error: "exit status 1", Output: "clock not synchronized"},
		},
		healthy: true,
		summary: "wanted check 50-ntp failed (exit status 1): clock not synchronized",
	}, {
		name: "a hung check is killed at the timeout, its children too",
		files: map[string]string{
			"required.d/10-hang": "echo waiting; sleep 60 & sleep 60",
		},
		timeout: 300 * time.Millisecond,
		want:    []got{{Name: "10-hang", Kind: "required", Error: "timed out after 300ms", Output: "waiting"}},
		summary: "required check 10-hang failed (timed out after 300ms): waiting",
	}, {
		name: "later directory replaces by name, masks, ignores hidden and backups",
		files: map[string]string{
			"required.d/10-x":    "exit 1",
			"required.d/20-y":    "exit 1",
			"required.d/30-z":    "echo z",
			"required.d/.hidden": "exit 1",
			"required.d/40-old~": "exit 1",
		},
		over: map[string]string{
			"required.d/10-x": "echo replaced",
			"required.d/20-y": "->/dev/null",
			"required.d/30-z": "",
		},
		want:    []got{{Name: "10-x", Kind: "required", OK: true, Output: "replaced"}},
		healthy: true,
		summary: "1 health checks passed",
	}, {
		name: "only the tail of a long output is kept",
		files: map[string]string{
			"wanted.d/10-chatty": "for i in $(seq 1 50); do echo line $i; done; exit 2",
		},
		want: []got{{Name: "10-chatty", Kind: "wanted", Error: "exit status 2",
			Output: "line 41\nline 42\nline 43\nline 44\nline 45\nline 46\nline 47\nline 48\nline 49\nline 50"}},
		healthy: true,
		summary: "wanted check 10-chatty failed (exit status 2): line 50",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dirs := []string{tree(t, tt.files), tree(t, tt.over), filepath.Join(t.TempDir(), "missing")}
			rep, err := Run(context.Background(), Options{Dirs: dirs, Timeout: tt.timeout})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, summarize(rep)); d != "" {
				t.Errorf("results (-want, +got):\n%s", d)
			}
			if rep.Healthy() != tt.healthy {
				t.Errorf("Healthy() = %v, want %v", rep.Healthy(), tt.healthy)
			}
			if s := rep.Summary(); s != tt.summary {
				t.Errorf("Summary() = %q, want %q", s, tt.summary)
			}
		})
	}
}

func TestTimeoutBounded(t *testing.T) {
	dir := tree(t, map[string]string{"required.d/10-hang": "sleep 60 & sleep 60"})
	start := time.Now()
	if _, err := Run(context.Background(), Options{Dirs: []string{dir}, Timeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// The whole group is killed: nothing waits for the background sleep.
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("a check timing out after 200ms took %s", d)
	}
}

func TestFindRefuses(t *testing.T) {
	dir := tree(t, map[string]string{"required.d/10-noexec": "-x true"})
	_, err := Find(Options{Dirs: []string{dir}})
	if err == nil || !strings.Contains(err.Error(), "10-noexec is not executable") {
		t.Fatalf("Find: %v, want a not executable error", err)
	}
	if _, err := Run(context.Background(), Options{Dirs: []string{dir}}); err == nil {
		t.Fatal("Run ran with a check that is not executable")
	}
}

func TestLogf(t *testing.T) {
	dir := tree(t, map[string]string{"required.d/10-a": "true", "wanted.d/20-b": "echo nope; exit 1"})
	var lines []string
	_, err := Run(context.Background(), Options{Dirs: []string{dir}, Logf: func(f string, a ...any) {
		lines = append(lines, fmt.Sprintf(f, a...))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "required check 10-a passed in ") || lines[1] != "wanted check 20-b failed (exit status 1): nope" {
		t.Errorf("log lines: %q", lines)
	}
}
