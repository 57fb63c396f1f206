package systemdboot

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want *Entry
		err  string
	}{
		{"stagehand", "title stagehand slot A (v1)\nversion v1\nlinux /stagehand/a/vmlinuz\ninitrd /stagehand/a/initramfs\noptions stagehand.slot=a console=ttyS0\n",
			&Entry{Title: "stagehand slot A (v1)", Version: "v1", Linux: "/stagehand/a/vmlinuz", Initrd: []string{"/stagehand/a/initramfs"}, Options: "stagehand.slot=a console=ttyS0"}, ""},
		{"systemd style", "# Boot Loader Specification type#1 entry\ntitle      Debian GNU/Linux 12\nversion\t6.1.0-56-amd64\nmachine-id 0123456789abcdef0123456789abcdef\nsort-key debian\noptions root=UUID=x ro\noptions quiet\nlinux /0123/6.1.0-56-amd64/linux\ninitrd /0123/6.1.0-56-amd64/microcode\ninitrd /0123/6.1.0-56-amd64/initrd.img\n",
			&Entry{Title: "Debian GNU/Linux 12", Version: "6.1.0-56-amd64", Linux: "/0123/6.1.0-56-amd64/linux",
				Initrd:  []string{"/0123/6.1.0-56-amd64/microcode", "/0123/6.1.0-56-amd64/initrd.img"},
				Options: "root=UUID=x ro quiet",
				Extra:   []Field{{"machine-id", "0123456789abcdef0123456789abcdef"}, {"sort-key", "debian"}}}, ""},
		{"quotes, CRLF, blanks", "  title \"quoted\"  \r\nlinux /k\r\n\ntitle\nversion   \n",
			&Entry{Title: "quoted", Linux: "/k"}, ""},
		{"no linux", "title x\n", nil, "no linux line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEntry([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseEntry = %+v, %v; want %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Fatalf("(-want, +got):\n%s", d)
			}
			b, err := got.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			again, err := ParseEntry(b)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(got, again); d != "" {
				t.Errorf("round trip through %q (-first, +second):\n%s", b, d)
			}
		})
	}
}

func TestMarshalEntry(t *testing.T) {
	e := &Entry{Title: "stagehand slot B (v2)", Version: "v2", Linux: "/stagehand/b/vmlinuz", Initrd: []string{"/stagehand/b/initramfs"}, Options: "stagehand.slot=b console=ttyS0"}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := "title stagehand slot B (v2)\nversion v2\nlinux /stagehand/b/vmlinuz\ninitrd /stagehand/b/initramfs\noptions stagehand.slot=b console=ttyS0\n"
	if string(b) != want {
		t.Errorf("Marshal:\n%s\nwant:\n%s", b, want)
	}
	for _, bad := range []*Entry{
		{Title: "x"},
		{Linux: "/k", Options: "a\nb"},
		{Linux: "/k", Initrd: []string{""}},
		{Linux: "/k", Extra: []Field{{"linux", "/other"}}},
		{Linux: "/k", Extra: []Field{{"two words", "v"}}},
	} {
		if b, err := bad.Marshal(); err == nil {
			t.Errorf("Marshal(%+v) = %q, want an error", bad, b)
		}
	}
	// Values that ParseConfig would trim or unquote are quoted.
	b, _ = FormatConfig([]Field{{"title", `"q"`}, {"version", " v "}})
	if got := ParseConfig(b); !cmp.Equal(got, []Field{{"title", `"q"`}, {"version", " v "}}) {
		t.Errorf("quoted round trip: %q -> %q", b, got)
	}
}

func TestEntryName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want EntryName
		out  string // String(), when not in
		err  bool
	}{
		{in: "stagehand-a.conf", want: EntryName{ID: "stagehand-a"}},
		{in: "stagehand-b+3.conf", want: EntryName{ID: "stagehand-b", Counting: true, Left: 3}},
		{in: "stagehand-b+2-1.conf", want: EntryName{ID: "stagehand-b", Counting: true, Left: 2, Done: 1}},
		{in: "stagehand-b+0-3.conf", want: EntryName{ID: "stagehand-b", Counting: true, Left: 0, Done: 3}},
		{in: "x+1-0.conf", want: EntryName{ID: "x", Counting: true, Left: 1}, out: "x+1.conf"},
		{in: "x+03.conf", want: EntryName{ID: "x", Counting: true, Left: 3}, out: "x+3.conf"},
		{in: "a+b.conf", want: EntryName{ID: "a+b"}},
		{in: "a+1-.conf", want: EntryName{ID: "a+1-"}},
		{in: "a+-1.conf", want: EntryName{ID: "a+-1"}},
		{in: "+3.conf", want: EntryName{ID: "+3"}},
		{in: "a+1+2.conf", want: EntryName{ID: "a+1", Counting: true, Left: 2}},
		{in: "stagehand-a", err: true},
		{in: ".conf", err: true},
		{in: "dir/a.conf", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseEntryName(tc.in)
			if tc.err {
				if err == nil {
					t.Fatalf("ParseEntryName = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("ParseEntryName = %+v, want %+v", got, tc.want)
			}
			out := tc.out
			if out == "" {
				out = tc.in
			}
			if got.String() != out {
				t.Errorf("String() = %q, want %q", got.String(), out)
			}
		})
	}
}
