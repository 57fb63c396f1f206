package cmdline

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Param
	}{
		{"", nil},
		{"  quiet  ", []Param{{Key: "quiet"}}},
		{"root=/dev/vda2 ro stagehand.slot=b\n", []Param{{"root", "/dev/vda2", true}, {Key: "ro"}, {"stagehand.slot", "b", true}}},
		{`a="x y" b= "c=d e"`, []Param{{"a", "x y", true}, {"b", "", true}, {"c", "d e", true}}},
		{`k=v=w`, []Param{{"k", "v=w", true}}},
		{`"unterminated x`, []Param{{Key: "unterminated x"}}},
	} {
		if diff := cmp.Diff(tc.want, Parse(tc.in)); diff != "" {
			t.Errorf("Parse(%q) (-want, +got):\n%s", tc.in, diff)
		}
	}
}

func TestGet(t *testing.T) {
	s := "stagehand.slot=a console=ttyS0 stagehand.slot=b stagehand.debug"
	if v, ok := Get(s, "stagehand.slot"); !ok || v != "b" {
		t.Errorf("last one wins: got %q %v", v, ok)
	}
	if v, ok := Get(s, "stagehand.debug"); !ok || v != "" {
		t.Errorf("flag: got %q %v", v, ok)
	}
	if _, ok := Get(s, "stagehand.kexec"); ok {
		t.Error("absent key found")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`BOOT_IMAGE=/vmlinuz root=UUID=1234 ro quiet stagehand.slot=a "x=a b"`)
	f.Fuzz(func(t *testing.T, s string) {
		ps := Parse(s)
		// Re-joining the words (quoted) parses back to the same words.
		var words []string
		for _, p := range ps {
			w := p.Key
			if p.Set {
				w += "=" + p.Value
			}
			if strings.ContainsAny(w, "\"") {
				return // a quote inside a word cannot be written back
			}
			words = append(words, `"`+w+`"`)
		}
		if diff := cmp.Diff(ps, Parse(strings.Join(words, " "))); diff != "" {
			t.Fatalf("re-parse differs:\n%s", diff)
		}
	})
}
