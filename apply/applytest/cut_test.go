package applytest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
)

// TestCutOverwrite: CutFS counts an in-place write as one change for each
// sector it changes, and a cut between two leaves the first new and the
// second old, as a disk that writes each sector whole leaves them.
func TestCutOverwrite(t *testing.T) {
	old := append(bytes.Repeat([]byte("o"), sectorSize), bytes.Repeat([]byte("O"), sectorSize)...)
	write := append(bytes.Repeat([]byte("n"), sectorSize), bytes.Repeat([]byte("N"), sectorSize)...)
	for _, tc := range []struct {
		name  string
		p     []byte // written at offset 0
		at    int    // the change cut before
		steps int    // the changes of the write
		want  []byte // the file after
	}{
		{"both sectors, not cut", write, 0, 2, write},
		{"both sectors, cut before", write, 1, 0, old},
		{"both sectors, cut between", write, 2, 1, append(write[:sectorSize:sectorSize], old[sectorSize:]...)},
		{"the second sector alone", append(old[:sectorSize:sectorSize], write[sectorSize:]...), 0, 1, append(old[:sectorSize:sectorSize], write[sectorSize:]...)},
		{"nothing changed", old, 0, 0, old},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "env"), old, 0o644); err != nil {
				t.Fatal(err)
			}
			c := &CutFS{FS: boot.Dir(dir), At: tc.at}
			func() {
				defer func() {
					if r := recover(); r != nil {
						if err, ok := r.(error); !ok || !errors.Is(err, ErrCut) {
							panic(r)
						}
					}
				}()
				if err := c.OverwriteFile("env", 0, tc.p); err != nil {
					t.Fatal(err)
				}
			}()
			if tc.at == 0 && c.N != tc.steps {
				t.Errorf("%d changes counted, want %d", c.N, tc.steps)
			}
			got, err := os.ReadFile(filepath.Join(dir, "env"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("file after:\n%q\nwant:\n%q", got, tc.want)
			}
		})
	}
}
