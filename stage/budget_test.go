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
// 4 MiB), since staging streams; then a new version of the 512 MiB image
// as a delta from the first, within the budget too. Not a timing: it runs in make test so that
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
	var large512 artifactsIn
	var disk512 string
	for _, size := range []int{64 * mib, 512 * mib} {
		tag := fmt.Sprintf("rss%d", size/mib)
		ref := reg + "/budget:" + tag
		a := newArtifacts(uint64(size), 16*mib, size-16*mib, tag)
		push(t, ref, buildImage(t, a, "amd64"), nil)
		disk := testDisk(t, int64(2*size+64*mib))
		peaks[size], _ = peakRSS(t, bin, "--image", ref, "--disk", disk)
		if peaks[size] > rssBudgetMiB {
			t.Errorf("stager's peak RSS staging %d MiB: %.1f MiB, budget %d MiB", size/mib, peaks[size], rssBudgetMiB)
		}
		large512, disk512 = a, disk
	}
	small, large := peaks[64*mib], peaks[512*mib]
	if limit := small + max(0.15*small, 4); large > limit {
		t.Errorf("stager's peak RSS grows with the image: %.1f MiB for 512 MiB against %.1f MiB for 64 MiB (limit %.1f)", large, small, limit)
	}
	// The 512 MiB image with 64 KiB changed, staged as a delta over the
	// one staged: 512 MiB of seeds cut and indexed, the Reader's buffers.
	v2 := artifactsIn{large512.kernel, bytes.Clone(large512.initramfs), "rss512-v2"}
	copy(v2.initramfs[len(v2.initramfs)/2:], randomBytes(99, 64<<10))
	ref := reg + "/budget:rss512-v2"
	push(t, ref, buildImage(t, v2, "amd64"), nil)
	dpeak, out := peakRSS(t, bin, "--image", ref, "--disk", disk512)
	if !bytes.Contains(out, []byte("delta: fetched")) {
		t.Fatalf("the second staging was not a delta: %s", out)
	}
	if dpeak > rssBudgetMiB {
		t.Errorf("stager's peak RSS staging 512 MiB as a delta: %.1f MiB, budget %d MiB", dpeak, rssBudgetMiB)
	}
	t.Logf("peak RSS: %.1f MiB (64 MiB image), %.1f MiB (512 MiB image), %.1f MiB (512 MiB as a delta)", small, large, dpeak)
}

// peakRSS runs bin with args under GNU time and returns its peak RSS in
// MiB, and what it printed. time forks a small process of its own before exec, so ru_maxrss is
// bin's alone, not this (large) test process's. The Go runtime's tuning
// variables are left out: the figure is the binary's as shipped.
func peakRSS(t *testing.T, bin string, args ...string) (float64, []byte) {
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
	return kb / 1024, out
}
