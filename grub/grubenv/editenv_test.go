package grubenv

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// editenv runs Debian's grub-editenv (grub-common 2.06) on file.
func editenv(t *testing.T, file string, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("grub-editenv")
	if err != nil {
		t.Fatalf("grub-editenv (Debian package grub-common) is missing: run make deps")
	}
	out, err := exec.Command(bin, append([]string{file}, args...)...).CombinedOutput()
	return string(out), err
}

// grubList is what GRUB's own parser (grub_envblk_iterate) reads from b.
func grubList(t *testing.T, b []byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "grubenv")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := editenv(t, file, "list")
	if err != nil {
		t.Fatalf("grub-editenv list: %v: %s", err, out)
	}
	return out
}

func ourList(e *Env) string {
	var s strings.Builder
	for _, k := range e.Keys() {
		v, _ := e.Get(k)
		s.WriteString(k + "=" + v + "\n")
	}
	return s.String()
}

// op is one grub-editenv command; set takes NAME=VALUE, unset NAME.
type op struct {
	cmd  string
	args []string
}

func TestMatchesGrubEditenv(t *testing.T) {
	long := strings.Repeat("y", 400)
	for _, tc := range []struct {
		name  string
		first []string // SetFirst these before handing the block to grub-editenv
		ops   []op
	}{
		{name: "create"},
		{name: "set and unset", ops: []op{
			{"set", []string{"a=1", "b=2", "saved_entry=Debian GNU/Linux"}},
			{"set", []string{"a=100"}},
			{"set", []string{"b="}},
			{"unset", []string{"a", "nothing"}},
			{"set", []string{"a=1"}},
			{"unset", []string{"saved_entry"}},
		}},
		{name: "escapes", ops: []op{
			{"set", []string{"bs=a\\b", "nl=line1\nline2", "both=\\\n\\", "eq=x=y"}},
			{"set", []string{"nl=\n"}},
			{"unset", []string{"bs"}},
		}},
		{name: "names", ops: []op{
			{"set", []string{"a.b=1", "a-b=2", "a b=3", "x#y=4", "caf\xc3\xa9=5"}},
		}},
		{name: "fills up", ops: []op{
			{"set", []string{"l1=" + long, "l2=" + long}},
			{"set", []string{"l3=" + long[:Size-len(Header)-len(debianWarning)-2*len("l1=\n"+long)-len("l3=\n")]}},
			{"set", []string{"l2=" + long + "z"}},
			{"set", []string{"l3=y"}},
			{"set", []string{"l1=" + long + "z"}},
			{"set", []string{"new=1", "l1=" + long + strings.Repeat("z", 200)}},
		}},
		{name: "grub-editenv on a sector pad", first: []string{"stagehand_tries=3", "stagehand_trial=b"}, ops: []op{
			{"set", []string{"note=appended after the pad"}},
			{"set", []string{"stagehand_tries=2"}},
			{"unset", []string{"note"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "grubenv")
			if out, err := editenv(t, file, "create"); err != nil {
				t.Fatalf("grub-editenv create: %v: %s", err, out)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			e, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse of grub-editenv create: %v", err)
			}
			for _, kv := range tc.first {
				name, value, _ := strings.Cut(kv, "=")
				if err := e.SetFirst(name, value); err != nil {
					t.Fatal(err)
				}
			}
			if len(tc.first) > 0 {
				if b, err = e.MarshalBinary(); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			check := func(step string) {
				t.Helper()
				got, err := e.MarshalBinary()
				if err != nil {
					t.Fatalf("%s: %v", step, err)
				}
				want, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: block differs from grub-editenv's:\ngot  %q\nwant %q", step, got, want)
				}
				if diff := cmp.Diff(grubList(t, want), ourList(e)); diff != "" {
					t.Fatalf("%s: variables differ from grub-editenv list (-grub, +ours):\n%s", step, diff)
				}
			}
			check("create")
			for _, o := range tc.ops {
				step := o.cmd + " " + strings.Join(o.args, " ")
				out, gerr := editenv(t, file, append([]string{o.cmd}, o.args...)...)
				old := *e
				old.lines = append([]line(nil), e.lines...)
				for _, a := range o.args {
					if o.cmd == "unset" {
						e.Delete(a)
						continue
					}
					name, value, _ := strings.Cut(a, "=")
					if err := e.Set(name, value); err != nil {
						t.Fatalf("%s: %v", step, err)
					}
				}
				if _, err := e.MarshalBinary(); errors.Is(err, ErrTooSmall) {
					if gerr == nil || !strings.Contains(out, "environment block too small") {
						t.Fatalf("%s: we find the block too small, grub-editenv says %v: %s", step, gerr, out)
					}
					*e = old // grub-editenv wrote nothing
				} else if gerr != nil {
					t.Fatalf("%s: grub-editenv: %v: %s", step, gerr, out)
				}
				check(step)
			}
		})
	}
}
