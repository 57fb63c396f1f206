//go:build !vm

package crashstate_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/qemu-tests/crashstate"
)

// TestRegressions boots every crash state a campaign once failed on
// (testdata/regress, saved with -crash.keep): each must settle now. They
// are the apply's states of issue 14 with subsets and torn writes: FAT
// copies that differ ("fat tables did not match"), a directory whose
// cluster the cut left unallocated ("invalid start cluster" on the apply's
// retry), and a loader entry whose directory entry landed before its data
// ("loader entry has no linux line").
func TestRegressions(t *testing.T) {
	states, err := filepath.Glob("testdata/regress/*.state.gz")
	if err != nil || len(states) == 0 {
		t.Fatalf("no saved states in testdata/regress (%v)", err)
	}
	m := &applytest.Machine{T: t, Dir: t.TempDir()}
	versions := map[string]crashstate.Files{}
	for _, v := range []string{"v1", "v2"} {
		k, i := m.Inputs(v)
		versions[v] = crashstate.FilesOf(read(t, k), read(t, i))
	}
	for _, p := range states {
		t.Run(strings.TrimSuffix(filepath.Base(p), ".state.gz"), func(t *testing.T) {
			c := &crashstate.Checker{T: t, Versions: versions}
			if f := c.CheckSaved(p); f != nil {
				t.Errorf("%s: %s\n%s", f.State.Kind, f.Err, f.Log)
			}
		})
	}
}
