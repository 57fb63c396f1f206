package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Kind says what a failed check does: a required one blocks the confirm, a
// wanted one only warns.
type Kind string

// The kinds, named after their directories.
const (
	Required Kind = "required"
	Wanted   Kind = "wanted"
)

// DefaultDirs are the directories holding required.d and wanted.d, lowest
// precedence first, as systemd layers its configuration: a check in /etc
// replaces one of the same name in /run, which replaces one in /usr/lib.
var DefaultDirs = []string{"/usr/lib/stagehand/check", "/run/stagehand/check", "/etc/stagehand/check"}

// DefaultTimeout bounds each check.
const DefaultTimeout = 2 * time.Minute

// tailBytes and tailLines bound the output kept of a check.
const (
	tailBytes = 4096
	tailLines = 10
)

// Check is one executable found in a required.d or wanted.d directory.
type Check struct {
	Name string `json:"name"` // file name, which orders the checks
	Path string `json:"path"`
	Kind Kind   `json:"kind"`
}

// Result is what one check did.
type Result struct {
	Check
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"`  // "exit status 1", "timed out after 2m0s", …
	Output   string        `json:"output,omitempty"` // the tail of its stdout and stderr
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of a run, the checks in the order they ran.
type Report struct {
	Results []Result `json:"results"`
}

// Failed returns the failed checks of kind.
func (r *Report) Failed(kind Kind) []Result {
	var out []Result
	for _, x := range r.Results {
		if !x.OK && x.Kind == kind {
			out = append(out, x)
		}
	}
	return out
}

// Healthy tells whether every required check passed.
func (r *Report) Healthy() bool { return len(r.Failed(Required)) == 0 }

// Summary says in one line what failed, or that all passed.
func (r *Report) Summary() string {
	req, want := r.Failed(Required), r.Failed(Wanted)
	if len(req) == 0 && len(want) == 0 {
		return fmt.Sprintf("%d health checks passed", len(r.Results))
	}
	var parts []string
	for _, x := range req {
		parts = append(parts, "required check "+x.Describe())
	}
	for _, x := range want {
		parts = append(parts, "wanted check "+x.Describe())
	}
	return strings.Join(parts, "; ")
}

// Describe says what went wrong with a failed check, with the last line of
// its output.
func (x Result) Describe() string {
	s := fmt.Sprintf("%s failed (%s)", x.Name, x.Error)
	if out := strings.TrimSpace(x.Output); out != "" {
		lines := strings.Split(out, "\n")
		s += ": " + strings.TrimSpace(lines[len(lines)-1])
	}
	return s
}

// Options configure Find and Run.
type Options struct {
	// Dirs hold required.d and wanted.d, lowest precedence first; nil
	// means DefaultDirs. Directories that do not exist are skipped.
	Dirs []string
	// Timeout bounds each check; 0 means DefaultTimeout.
	Timeout time.Duration
	// Logf reports each check as it ends; discarded when nil.
	Logf func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.Dirs == nil {
		o.Dirs = DefaultDirs
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Find lists the checks, required ones first, each kind ordered by file
// name. A name in a later directory replaces the same name in an earlier
// one; a check that is a symlink to /dev/null (or empty) is masked.
// Hidden files and files ending in ~ are ignored, and a file that is not
// executable is an error: it was meant to run.
func Find(opts Options) ([]Check, error) {
	opts.defaults()
	var out []Check
	for _, kind := range []Kind{Required, Wanted} {
		byName := map[string]string{}
		for _, dir := range opts.Dirs {
			d := filepath.Join(dir, string(kind)+".d")
			ents, err := os.ReadDir(d)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("reading health checks: %w", err)
			}
			for _, e := range ents {
				if n := e.Name(); strings.HasPrefix(n, ".") || strings.HasSuffix(n, "~") {
					continue
				}
				byName[e.Name()] = filepath.Join(d, e.Name())
			}
		}
		names := make([]string, 0, len(byName))
		for n := range byName {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p := byName[n]
			if masked(p) {
				continue
			}
			fi, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("health check %s: %w", p, err)
			}
			if fi.IsDir() {
				continue
			}
			if fi.Mode()&0o111 == 0 {
				return nil, fmt.Errorf("health check %s is not executable: chmod +x it, or remove it", p)
			}
			out = append(out, Check{Name: n, Path: p, Kind: kind})
		}
	}
	return out, nil
}

// masked tells whether p is a symlink to /dev/null or an empty file.
func masked(p string) bool {
	if t, err := os.Readlink(p); err == nil && t == os.DevNull {
		return true
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == 0
}

// Run runs the checks Find lists, one after the other, each with the
// timeout, and reports them all: a failed check does not stop the others.
// An error means the checks could not be listed; a failed check is in the
// report.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts.defaults()
	checks, err := Find(opts)
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	for _, c := range checks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		x := runOne(ctx, c, opts.Timeout)
		if x.OK {
			opts.Logf("%s check %s passed in %s", x.Kind, x.Name, x.Duration.Round(time.Millisecond))
		} else {
			opts.Logf("%s check %s", x.Kind, x.Describe())
		}
		rep.Results = append(rep.Results, x)
	}
	return rep, nil
}

// runOne runs one check in its own process group, killed whole at the
// timeout.
func runOne(ctx context.Context, c Check, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out tail
	cmd := exec.CommandContext(ctx, c.Path)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "STAGEHAND_CHECK_KIND="+string(c.Kind))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // a grandchild holding the output open
	start := time.Now()
	err := cmd.Run()
	x := Result{Check: c, Duration: time.Since(start), Output: out.String()}
	switch {
	case err == nil:
		x.OK = true
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		x.Error = fmt.Sprintf("timed out after %s", timeout)
	default:
		x.Error = err.Error()
	}
	return x
}

// tail keeps the last tailBytes written to it, cut to the last tailLines
// lines when read.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*tailBytes {
		t.b = append(t.b[:0], t.b[len(t.b)-tailBytes:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	b := t.b
	if len(b) > tailBytes {
		b = b[len(b)-tailBytes:]
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.ToValidUTF8(string(bytes.Join(lines, []byte("\n"))), "?")
}
