package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/meta"
)

// stager runs one command in-process and returns its exit code and output.
func stager(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// small is a layout with a small ESP: META tests hash whole images.
var small = []disktest.Part{{Label: "EFI", Size: 4 * disktest.MiB}, {Label: "META", Size: disktest.MiB}, {Label: "STAGE", Size: 4 * disktest.MiB}}

func newDisk(t *testing.T) string {
	return disktest.Image(t, filepath.Join(t.TempDir(), "disk.img"), small)
}

func TestMetaCommands(t *testing.T) {
	img := newDisk(t)
	steps := []struct {
		args []string
		out  string // substring of stdout
	}{
		{[]string{"meta", "list", "--disk", img}, "is empty"},
		{[]string{"meta", "set", "talos-staged-image-ref", "127.0.0.1:5000/os:v2", "--disk", img}, "set tag 0x07 (20 bytes)"},
		{[]string{"meta", "set", "0x20", "--hex", "00ff10", "--disk", img}, "generation 2"},
		{[]string{"meta", "get", "7", "--disk", img}, "127.0.0.1:5000/os:v2\n"},
		{[]string{"meta", "get", "0x20", "--disk", img}, "00ff10\n"},
		{[]string{"meta", "get", "7", "--hex", "--disk", img}, "3132372e"},
		{[]string{"meta", "list", "--disk", img}, "0x07  talos-staged-image-ref  20    127.0.0.1:5000/os:v2"},
		{[]string{"meta", "list", "--disk", img}, "0x20                          3     hex:00ff10"},
		{[]string{"meta", "delete", "0x20", "--disk", img}, "deleted tag 0x20"},
		{[]string{"meta", "delete", "0x20", "--disk", img}, "nothing to delete"},
	}
	for _, s := range steps {
		code, out, errOut := stager(t, s.args...)
		if code != 0 || !strings.Contains(out, s.out) {
			t.Fatalf("stager %s: exit %d, stdout %q, stderr %q; want %q", strings.Join(s.args, " "), code, out, errOut, s.out)
		}
	}
	code, out, _ := stager(t, "meta", "list", "--json", "--disk", img)
	var v struct {
		Generation uint64
		Copies     []struct{ Valid bool }
		Entries    []struct {
			Tag  uint8
			Name string
			Text *string
			Hex  string
		}
	}
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil {
		t.Fatalf("list --json: exit %d, %v: %s", code, err, out)
	}
	if v.Generation != 3 || len(v.Copies) != 2 || !v.Copies[0].Valid || len(v.Entries) != 2 ||
		v.Entries[0].Name != "talos-staged-image-ref" || *v.Entries[0].Text != "127.0.0.1:5000/os:v2" || v.Entries[1].Tag != 0x40 {
		t.Errorf("list --json = %+v", v)
	}
}

func TestMetaOnLoopDevice(t *testing.T) {
	img := newDisk(t)
	dev := disktest.Loop(t, img)
	if code, _, e := stager(t, "meta", "set", "7", "on-a-loop", "--disk", dev); code != 0 {
		t.Fatalf("set on %s: %s", dev, e)
	}
	if code, out, e := stager(t, "meta", "get", "7", "--disk", dev); code != 0 || out != "on-a-loop\n" {
		t.Fatalf("get on %s: %q %s", dev, out, e)
	}
}

// TestMetaBadInput runs every refusal: one line on stderr, the exit code, and
// the image's bytes unchanged.
func TestMetaBadInput(t *testing.T) {
	disk.LockTimeout = 300 * time.Millisecond
	dir := t.TempDir()
	good := newDisk(t)
	stager(t, "meta", "set", "7", "ref", "--disk", good)
	bothCorrupt := disktest.Image(t, filepath.Join(dir, "corrupt.img"), small)
	corrupt(t, bothCorrupt, 0, 1)
	bigMeta := disktest.Image(t, filepath.Join(dir, "big.img"), []disktest.Part{{Label: "EFI", Size: 4 * disktest.MiB}, {Label: "META", Size: 2 * disktest.MiB}})
	noGPT := filepath.Join(dir, "zeros.img")
	os.WriteFile(noGPT, make([]byte, 8*disktest.MiB), 0o600)
	truncated := disktest.Image(t, filepath.Join(dir, "trunc.img"), small)
	os.Truncate(truncated, 5*disktest.MiB+disktest.MiB/2) // ends inside META
	big := strings.Repeat("x", meta.Capacity-8-5)         // fits alone, not beside tag 7

	for _, tc := range []struct {
		name string
		img  string
		args []string
		code int
		msg  string
	}{
		{"bad tag", good, []string{"meta", "get", "bogus"}, 2, `tag "bogus" is neither`},
		{"tag zero", good, []string{"meta", "set", "0", "x"}, 2, "neither a number from 0x01"},
		{"tag too big", good, []string{"meta", "set", "0x100", "x"}, 2, "neither a number"},
		{"odd hex", good, []string{"meta", "set", "7", "--hex", "abc"}, 2, "is not hex"},
		{"generation", good, []string{"meta", "set", "generation", "1"}, 2, "managed by the store"},
		{"delete generation", good, []string{"meta", "delete", "0x40"}, 2, "managed by the store"},
		{"bad slots record", good, []string{"meta", "set", "slots", `{"phase":"nope"}`}, 2, `unknown phase "nope"`},
		{"META full", good, []string{"meta", "set", "0x30", big}, 1, "META full"},
		{"absent tag", good, []string{"meta", "get", "0x31"}, 1, "tag 0x31 is not set"},
		{"missing args", good, []string{"meta", "set", "7"}, 2, "takes a TAG and a VALUE"},
		{"unknown flag", good, []string{"meta", "list", "--bogus"}, 2, "unknown flag: --bogus"},
		{"both copies corrupt: list", bothCorrupt, []string{"meta", "list"}, 1, "is corrupt: copy 1: checksum mismatch"},
		{"both copies corrupt: set", bothCorrupt, []string{"meta", "set", "7", "x"}, 1, "stager meta format"},
		{"format refuses a valid META", good, []string{"meta", "format"}, 1, "pass --force"},
		{"2 MiB META", bigMeta, []string{"meta", "list"}, 1, "labelled META but is 2097152 bytes"},
		{"no GPT", noGPT, []string{"meta", "set", "7", "x"}, 1, "no valid GPT"},
		{"truncated", truncated, []string{"meta", "set", "7", "x"}, 1, "truncated"},
		{"no such disk", filepath.Join(dir, "nope.img"), []string{"meta", "list"}, 1, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before [32]byte
			if _, err := os.Stat(tc.img); err == nil {
				before = hashFile(t, tc.img)
			}
			code, _, errOut := stager(t, append(tc.args, "--disk", tc.img)...)
			if code != tc.code || !strings.Contains(errOut, tc.msg) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.code, tc.msg)
			}
			if strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "stager: ") {
				t.Errorf("stderr is not one line: %q", errOut)
			}
			if _, err := os.Stat(tc.img); err == nil && hashFile(t, tc.img) != before {
				t.Error("the image changed")
			}
		})
	}

	t.Run("locked", func(t *testing.T) {
		d, err := disk.Open(good, true)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		d.Lock(context.Background(), true)
		before := hashFile(t, good)
		code, _, errOut := stager(t, "meta", "set", "7", "y", "--disk", good)
		if code != 1 || !strings.Contains(errOut, "locked by another stagehand process") {
			t.Errorf("exit %d, %q", code, errOut)
		}
		if hashFile(t, good) != before {
			t.Error("the image changed")
		}
	})
}

// corrupt flips a byte in the given META copies of img.
func corrupt(t *testing.T, img string, copies ...int) {
	t.Helper()
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.META()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range copies {
		// Write a valid-looking but broken copy: right magic, wrong checksum.
		buf, _ := (&meta.Block{}).Marshal()
		buf[100] = 1
		f.WriteAt(buf, r.Offset+int64(c)*meta.BlockSize)
	}
}

func TestMetaRepairAndFormat(t *testing.T) {
	img := newDisk(t)
	stager(t, "meta", "set", "7", "ref", "--disk", img)
	corrupt(t, img, 0)
	code, out, errOut := stager(t, "meta", "get", "7", "--disk", img)
	if code != 0 || out != "ref\n" || !strings.Contains(errOut, "copy 1 is corrupt") || !strings.Contains(errOut, "the next write repairs it") {
		t.Fatalf("get with copy 1 corrupt: exit %d, %q, %q", code, out, errOut)
	}
	stager(t, "meta", "set", "8", "{}", "--disk", img)
	if _, _, errOut := stager(t, "meta", "list", "--disk", img); errOut != "" {
		t.Errorf("after a write, still: %q", errOut)
	}
	corrupt(t, img, 0, 1)
	if code, out, errOut := stager(t, "meta", "format", "--disk", img); code != 0 || !strings.Contains(out, "wrote an empty META") {
		t.Fatalf("format: %d %q %q", code, out, errOut)
	}
	if code, out, _ := stager(t, "meta", "list", "--disk", img); code != 0 || !strings.Contains(out, "generation") {
		t.Errorf("after format: %d %q", code, out)
	}
}
