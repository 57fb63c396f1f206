package systemdboot

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzEntry: an entry that parses marshals to a file that parses to the
// same entry, and marshals to the same bytes again.
func FuzzEntry(f *testing.F) {
	f.Add([]byte("title stagehand slot A (v1)\nversion v1\nlinux /stagehand/a/vmlinuz\ninitrd /stagehand/a/initramfs\noptions stagehand.slot=a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEntry(b)
		if err != nil {
			return
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed entry %+v: %v", e, err)
		}
		again, err := ParseEntry(out)
		if err != nil {
			t.Fatalf("re-parsing %q: %v", out, err)
		}
		if d := cmp.Diff(e, again); d != "" {
			t.Fatalf("round trip through %q (-first, +second):\n%s", out, d)
		}
		out2, _ := again.Marshal()
		if string(out) != string(out2) {
			t.Fatalf("Marshal is not stable: %q then %q", out, out2)
		}
	})
}

// FuzzEntryName: a name that parses formats to a name that parses to the
// same thing.
func FuzzEntryName(f *testing.F) {
	f.Add("stagehand-b+2-1.conf")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseEntryName(s)
		if err != nil {
			return
		}
		again, err := ParseEntryName(n.String())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", n.String(), err)
		}
		if again != n {
			t.Fatalf("%q -> %+v -> %q -> %+v", s, n, n.String(), again)
		}
	})
}
