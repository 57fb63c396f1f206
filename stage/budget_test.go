package stage

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/internal/gobuild"
)

// rssBudgetMiB is stager's peak RSS budget while staging (issue 27):
// 18.0 MiB at fa8e344, 69.9 MiB while it linked the Kubernetes agent.
const rssBudgetMiB = 64

// TestStageRSS stages a 64 MiB and a 512 MiB image with the stager binary
// as `make build` builds it and checks its peak RSS: within the budget for
// both, and no larger for the larger image than the smaller's plus 15% (or
// 4 MiB), since staging streams. Not a timing: it runs in make test so that
// a regression fails CI; BenchmarkStageRSS reports the same figure in
// make bench.
func TestStageRSS(t *testing.T) {
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		t.Fatalf("no /usr/bin/time (%v): run 'make deps' (scripts/deps.sh installs Debian's time) as root", err)
	}
	bin := filepath.Join(t.TempDir(), "stager")
	if err := gobuild.Static(".", runtime.GOARCH, bin, "../cmd/stager"); err != nil {
		t.Fatal(err)
	}
	reg := testRegistry(t, "", "")
	peaks := map[int]float64{}
	for _, size := range []int{64 * mib, 512 * mib} {
		tag := fmt.Sprintf("rss%d", size/mib)
		ref := reg + "/budget:" + tag
		push(t, ref, buildImage(t, newArtifacts(uint64(size), 16*mib, size-16*mib, tag), "amd64"), nil)
		peaks[size] = peakRSS(t, bin, "--image", ref, "--disk", testDisk(t, int64(2*size+64*mib)))
		if peaks[size] > rssBudgetMiB {
			t.Errorf("stager's peak RSS staging %d MiB: %.1f MiB, budget %d MiB", size/mib, peaks[size], rssBudgetMiB)
		}
	}
	small, large := peaks[64*mib], peaks[512*mib]
	t.Logf("peak RSS: %.1f MiB (64 MiB image), %.1f MiB (512 MiB image)", small, large)
	if limit := small + max(0.15*small, 4); large > limit {
		t.Errorf("stager's peak RSS grows with the image: %.1f MiB for 512 MiB against %.1f MiB for 64 MiB (limit %.1f)", large, small, limit)
	}
}

// peakRSS runs bin with args under GNU time and returns its peak RSS in
// MiB. time forks a small process of its own before exec, so ru_maxrss is
// bin's alone, not this (large) test process's. The Go runtime's tuning
// variables are left out: the figure is the binary's as shipped.
func peakRSS(t *testing.T, bin string, args ...string) float64 {
	t.Helper()
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "maxrss=%M", bin}, args...)...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "GOGC" && k != "GOMEMLIMIT" && k != "GODEBUG" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("stager %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var kb float64
	i := bytes.LastIndex(out, []byte("maxrss="))
	if i < 0 {
		t.Fatalf("no peak RSS in the output of /usr/bin/time: %q", out)
	}
	if _, err := fmt.Sscanf(string(out[i:]), "maxrss=%f", &kb); err != nil {
		t.Fatalf("reading peak RSS from %q: %v", out[i:], err)
	}
	return kb / 1024
}
