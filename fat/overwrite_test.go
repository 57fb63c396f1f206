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

// fragmented writes name over clusters that are not one run: it is
// written with one cluster, another file after it, then name again, larger,
// which keeps its first cluster and grows past the other file's. It returns
// the volume opened afresh and the file's contents.
func fragmented(t *testing.T, img string, esp *Volume, name string) (*Volume, []byte) {
	t.Helper()
	g, err := esp.st.geometry()
	if err != nil {
		t.Fatal(err)
	}
	cs := int(g.clusterSize())
	data := randomBytes(7, 2*cs+cs/2)
	for _, w := range []struct {
		name string
		data []byte
	}{{name, data[:cs]}, {"other", randomBytes(8, cs)}, {name, data}} {
		if err := esp.WriteFile(w.name, bytes.NewReader(w.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	return reopen(t, img, esp), data
}

// reopen opens the image's volume afresh, as the next boot would.
func reopen(t *testing.T, img string, old *Volume) *Volume {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	v, err := Open(f, old.size)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func runsOf(t *testing.T, v *Volume, name string) (runs [][2]uint64) {
	t.Helper()
	fl, err := v.fs.OpenFile(espPath(name), os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	rs, err := diskRanges(fl)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		runs = append(runs, [2]uint64{r.Offset, r.Length})
	}
	return runs
}

// TestOverwriteFile writes over parts of a file whose clusters are not one
// run, across the gap too, and checks that only those bytes of the image
// changed (no FAT, directory entry or FSInfo write), that a fresh volume
// reads them back, and that fsck.fat finds the volume clean.
func TestOverwriteFile(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	const name = "grub/grubenv"
	esp, data := fragmented(t, img, esp, name)
	runs := runsOf(t, esp, name)
	if len(runs) < 2 {
		t.Fatalf("the file lies in one run %v: the test needs it in pieces", runs)
	}
	first := int(runs[0][1]) // where the first run ends, in the file
	for _, tc := range []struct {
		name string
		off  int
		n    int
	}{
		{"start", 0, 1024},
		{"across the runs", first - 200, 400},
		{"last byte", len(data) - 1, 1},
		{"whole", 0, len(data)},
		{"nothing", 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			p := randomBytes(uint64(tc.off+tc.n), tc.n)
			if err := esp.OverwriteFile(name, int64(tc.off), p); err != nil {
				t.Fatal(err)
			}
			copy(data[tc.off:], p)
			after, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			// Only the file's bytes written may differ.
			allowed := map[int]bool{}
			pos := 0
			for _, r := range runs {
				for i := 0; i < int(r[1]); i++ {
					if pos >= tc.off && pos < tc.off+tc.n {
						allowed[int(r[0])+i] = true
					}
					pos++
				}
			}
			for i := range before {
				if before[i] != after[i] && !allowed[i] {
					t.Fatalf("byte %d of the image changed, outside the file's bytes written", i)
				}
			}
			if got := runsOf(t, esp, name); len(got) != len(runs) || got[0] != runs[0] || got[len(got)-1] != runs[len(runs)-1] {
				t.Errorf("the file's runs went from %v to %v", runs, got)
			}
			again := reopen(t, img, esp)
			got, err := again.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("a fresh volume reads other bytes back")
			}
		})
	}
	out := fattest.Fsck(t, img)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
		t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
	}
	if got := fattest.Mtools(t, "mtype", img, 0, "::/"+name); got != string(data) {
		t.Errorf("mtype reads %d bytes, not the %d written", len(got), len(data))
	}
}

func TestOverwriteFileRefuses(t *testing.T) {
	esp, img := newESP(t, 100<<20)
	if err := esp.WriteFile("dir/file", strings.NewReader("0123456789")); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		off        int64
		p          string
		want       string
		notExist   bool
	}{
		{"past the end", "dir/file", 5, "abcdef", "do not lie within", false},
		{"at the end", "dir/file", 10, "a", "do not lie within", false},
		{"negative offset", "dir/file", -1, "a", "do not lie within", false},
		{"absent", "dir/nothing", 0, "a", "", true},
		{"absent directory", "nodir/file", 0, "a", "", true},
		{"a directory", "dir", 0, "a", "directory", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := esp.OverwriteFile(tc.file, tc.off, []byte(tc.p))
			switch {
			case err == nil:
				t.Fatal("OverwriteFile succeeded")
			case tc.notExist && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("OverwriteFile = %v, want fs.ErrNotExist", err)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("OverwriteFile = %v, want %q", err, tc.want)
			}
			if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
				t.Error("the image changed")
			}
		})
	}
}
