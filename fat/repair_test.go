package fat

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/fat/fattest"
)

// TestRepairCut: an ESP where a cut left some of the writes since the last
// sync (a new directory and file: its data, directory entries and the two
// FAT copies) and lost others opens, the file already there intact, the new
// one whole or gone, and fsck.fat finds nothing.
func TestRepairCut(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	old, fresh := randomBytes(1, 1<<20+7), randomBytes(2, 300<<10+3)
	if err := esp.WriteFile("stagehand/a/vmlinuz", bytes.NewReader(old)); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	before := readAll(t, img)
	if err := esp.WriteFile("stagehand/b/vmlinuz", bytes.NewReader(fresh)); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	after := readAll(t, img)
	g, err := parseGeometry(after[:512])
	if err != nil {
		t.Fatal(err)
	}
	fat := func(i int64) [2]int64 { return [2]int64{g.fatOffset(i), g.fatOffset(i) + g.fatBytes()} }
	data := [2]int64{g.dataStart(), int64(len(after))}
	// newDir is the cluster of stagehand/b, made by the write: it starts
	// with "." after and did not before.
	newDir := int64(-1)
	for off := g.dataStart(); off+g.clusterSize() <= int64(len(after)); off += g.clusterSize() {
		if string(after[off:off+11]) == ".          " && string(before[off:off+11]) != ".          " {
			newDir = off
		}
	}
	if newDir < 0 {
		t.Fatal("no new directory cluster")
	}
	for _, c := range []struct {
		name   string
		landed [][2]int64 // what of after landed on before
		keeps  bool       // the new file is there
	}{
		{"all but the second FAT", [][2]int64{{0, g.fatOffset(1)}, data}, true},
		{"all but the first FAT", [][2]int64{{0, g.fatOffset(0)}, fat(1), data}, true},
		{"the directories and data, no FAT", [][2]int64{{0, g.fatOffset(0)}, data}, false},
		{"the first FAT only", [][2]int64{fat(0)}, false},
		{"the second FAT only", [][2]int64{fat(1)}, false},
		{"all but the new directory's cluster", [][2]int64{{0, newDir}, {newDir + g.clusterSize(), int64(len(after))}}, false},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			b := append([]byte(nil), before...)
			for _, r := range c.landed {
				copy(b[r[0]:r[1]], after[r[0]:r[1]])
			}
			p := t.TempDir() + "/esp.img"
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			e, err := Open(f, int64(len(b)))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if got, err := e.ReadFile("stagehand/a/vmlinuz"); err != nil || !bytes.Equal(got, old) {
				t.Errorf("the file written before the cut: %d bytes, %v", len(got), err)
			}
			got, err := e.ReadFile("stagehand/b/vmlinuz")
			switch {
			case c.keeps && (err != nil || !bytes.Equal(got, fresh)):
				t.Errorf("the new file: %d bytes, %v; want it whole", len(got), err)
			case !c.keeps && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("the new file: %d bytes, %v; want it gone", len(got), err)
			}
			if r, err := repairFAT(e.dev); err != nil || r.any() {
				t.Errorf("repaired again: %+v (%v)", r, err)
			}
			if out := fattest.Fsck(t, p); len(strings.Split(strings.TrimSpace(out), "\n")) != 2 {
				t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
			}
		})
	}
}

func readAll(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
