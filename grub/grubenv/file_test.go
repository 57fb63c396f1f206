package grubenv

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func writeBlock(t *testing.T, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "grubenv")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUpdateFile(t *testing.T) {
	path := writeBlock(t, block(debianWarning+"saved_entry=0\n"))
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	err = UpdateFile(path, func(e *Env) error {
		if err := e.SetFirst("stagehand_tries", "3"); err != nil {
			return err
		}
		return e.Set("stagehand_reason", "trial of v2")
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := block(debianWarning + "saved_entry=0\nstagehand_tries=3\n" +
		strings.Repeat("#", SectorSize-1-len(Header)-len(debianWarning)-len("saved_entry=0\nstagehand_tries=3\n")) +
		"\nstagehand_reason=trial of v2\n")
	if !bytes.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino {
		t.Error("the file was re-created")
	}
	if !after.ModTime().After(before.ModTime()) {
		t.Error("the file was not written")
	}

	// The same values again: nothing to write.
	if err := UpdateFile(path, func(e *Env) error { return e.SetFirst("stagehand_tries", "3") }); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(path); !again.ModTime().Equal(after.ModTime()) {
		t.Error("an update that changes nothing wrote the file")
	}
}

func TestUpdateFileRefuses(t *testing.T) {
	errFn := errors.New("fn failed")
	set := func(e *Env) error { return e.Set("a", "2") }
	for _, tc := range []struct {
		name string
		in   []byte
		fn   func(*Env) error
		want error
	}{
		{"short file", block("a=1\n")[:Size-1], set, ErrInvalid},
		{"long file", append(block("a=1\n"), '#'), set, ErrInvalid},
		{"empty file", nil, set, ErrInvalid},
		{"bad header", append([]byte("# GRUB Environment Blocc\n"), block("a=1\n")[len(Header):]...), set, ErrInvalid},
		{"bad line", block("a=1\nb\n"), set, ErrInvalid},
		{"fn fails", block("a=1\n"), func(*Env) error { return errFn }, errFn},
		{"does not fit", block("a=1\n"), func(e *Env) error { return e.Set("a", strings.Repeat("x", Size)) }, ErrTooSmall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeBlock(t, tc.in)
			err := UpdateFile(path, tc.fn)
			if !errors.Is(err, tc.want) {
				t.Fatalf("UpdateFile = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, tc.in) {
				t.Errorf("file changed to %q", got)
			}
		})
	}
	dir := t.TempDir()
	if err := UpdateFile(filepath.Join(dir, "grubenv"), set); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "grubenv")); err == nil {
		t.Error("UpdateFile created a missing file")
	}
	if err := UpdateFile(dir, set); err == nil {
		t.Error("UpdateFile accepted a directory")
	}
}

// TestTornWrite writes old and new blocks sector by sector in every
// combination, as a power cut during the pwrite can leave them, and checks
// that each parses, that GRUB reads the same variables, and that every
// first-sector variable has its old or its new value.
func TestTornWrite(t *testing.T) {
	first := []string{"stagehand_slot", "stagehand_trial", "stagehand_tries"}
	type change func(e *Env) error
	setFirst := func(kv ...string) change {
		return func(e *Env) error {
			for i := 0; i < len(kv); i += 2 {
				if err := e.SetFirst(kv[i], kv[i+1]); err != nil {
					return err
				}
			}
			return nil
		}
	}
	set := func(kv ...string) change {
		return func(e *Env) error {
			for i := 0; i < len(kv); i += 2 {
				if err := e.Set(kv[i], kv[i+1]); err != nil {
					return err
				}
			}
			return nil
		}
	}
	both := func(cs ...change) change {
		return func(e *Env) error {
			for _, c := range cs {
				if err := c(e); err != nil {
					return err
				}
			}
			return nil
		}
	}
	long := strings.Repeat("r", 300)
	base := both(setFirst("stagehand_slot", "a", "stagehand_tries", "0"),
		set("stagehand_reason", "installed", "stagehand_version", "v1"))
	for _, tc := range []struct {
		name string
		old  change
		new  change
	}{
		{"GRUB counts down", setFirst("stagehand_trial", "b", "stagehand_tries", "3"), setFirst("stagehand_tries", "2")},
		{"arm a trial, rewrite the rest", set("stagehand_reason", long),
			both(setFirst("stagehand_trial", "b", "stagehand_tries", "3"), set("stagehand_reason", "staged v2", "stagehand_version", "v2"))},
		{"confirm, grow the rest", setFirst("stagehand_trial", "b", "stagehand_tries", "1"),
			both(setFirst("stagehand_slot", "b"), func(e *Env) error { e.Delete("stagehand_trial"); return nil },
				setFirst("stagehand_tries", "0"), set("stagehand_reason", long, "other", long[:100]))},
		{"adopted with a comment", func(e *Env) error {
			e.lines = append([]line{{comment: debianWarning[:len(debianWarning)-1]}}, e.lines...)
			return nil
		},
			setFirst("stagehand_trial", "b", "stagehand_tries", "3")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var oldEnv Env
			if err := both(base, tc.old)(&oldEnv); err != nil {
				t.Fatal(err)
			}
			oldB, err := oldEnv.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			newEnv, err := Parse(oldB)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.new(newEnv); err != nil {
				t.Fatal(err)
			}
			newB, err := newEnv.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			for mask := 0; mask < 4; mask++ {
				mix := make([]byte, 0, Size)
				for s := 0; s < Size/SectorSize; s++ {
					src := oldB
					if mask&(1<<s) != 0 {
						src = newB
					}
					mix = append(mix, src[s*SectorSize:(s+1)*SectorSize]...)
				}
				e, err := Parse(mix)
				if err != nil {
					t.Fatalf("sectors %02b (1 = new): %v", mask, err)
				}
				if grub, ours := grubList(t, mix), ourList(e); grub != ours {
					t.Errorf("sectors %02b: GRUB reads %q, we read %q", mask, grub, ours)
				}
				for _, name := range first {
					got, gotOK := e.Get(name)
					o, oOK := oldEnv.Get(name)
					n, nOK := newEnv.Get(name)
					if (got != o || gotOK != oOK) && (got != n || gotOK != nOK) {
						t.Errorf("sectors %02b: %s = %q (set %v), neither old %q (%v) nor new %q (%v)",
							mask, name, got, gotOK, o, oOK, n, nOK)
					}
				}
			}
		})
	}
}

// TestTornWriteWithoutPad is the control: without the sector pad, shortening
// a line that straddles offset 512 gives a mix that is not a valid block.
func TestTornWriteWithoutPad(t *testing.T) {
	var oldEnv, newEnv Env
	for _, kv := range [][2]string{{"a", strings.Repeat("x", 500)}, {"b", "1"}} {
		if err := oldEnv.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := newEnv.Set("a", strings.Repeat("x", 400)); err != nil {
		t.Fatal(err)
	}
	if err := newEnv.Set("b", "1"); err != nil {
		t.Fatal(err)
	}
	oldB, err := oldEnv.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	newB, err := newEnv.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mix := append(append([]byte(nil), newB[:SectorSize]...), oldB[SectorSize:]...)
	if _, err := Parse(mix); err == nil {
		t.Errorf("a torn write without the pad parsed: %q", mix)
	}
}
