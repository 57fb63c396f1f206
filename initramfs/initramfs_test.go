package initramfs

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/u-root/u-root/pkg/cpio"
)

func testArchive(t *testing.T, src string) *Archive {
	t.Helper()
	a := New()
	err := a.Add(
		File{Path: "init", Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755},
		File{Path: "/etc/motd", Data: []byte("hello\n"), Mode: 0o644},
		File{Path: "bin/sh", Data: []byte("/init"), Mode: fs.ModeSymlink},
		File{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		File{Path: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		File{Path: "usr/share/data.bin", Source: src, Mode: 0o600},
	)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func write(t *testing.T, a *Archive) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := a.WriteTo(&b)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Errorf("WriteTo says %d bytes, wrote %d", n, b.Len())
	}
	return b.Bytes()
}

func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "data.bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("0123456789"), 100_001), 0o644); err != nil {
		t.Fatal(err)
	}
	first := write(t, testArchive(t, src))
	// Same contents, another time, mode and owner: the same bytes.
	os.Chtimes(src, time.Unix(1, 0), time.Unix(2, 0))
	os.Chmod(src, 0o600)
	os.Chown(src, 1234, 5678)
	if second := write(t, testArchive(t, src)); !bytes.Equal(first, second) {
		t.Fatal("the same entries gave different archives")
	}
	// Different contents: different bytes.
	os.WriteFile(src, []byte("other"), 0o644)
	if third := write(t, testArchive(t, src)); bytes.Equal(first, third) {
		t.Fatal("different contents gave the same archive")
	}
}

// TestGNUCpio unpacks an archive with GNU cpio, as root (device nodes), and
// checks what lands on disk.
func TestGNUCpio(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "data.bin")
	os.WriteFile(src, []byte("payload"), 0o644)
	img := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(img, write(t, testArchive(t, src)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	cmd := exec.Command("cpio", "-idm", "--quiet", "-F", img)
	cmd.Dir = out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v: %s (cpio comes with 'make deps')", err, b)
	}
	for _, tc := range []struct {
		path string
		mode fs.FileMode
		data string
	}{
		{"init", 0o755, "#!/bin/sh\necho hi\n"},
		{"etc", fs.ModeDir | 0o755, ""},
		{"etc/motd", 0o644, "hello\n"},
		{"usr/share/data.bin", 0o600, "payload"},
		{"tmp", fs.ModeDir | fs.ModeSticky | 0o777, ""},
		{"dev/console", fs.ModeDevice | fs.ModeCharDevice | 0o600, ""},
		{"bin/sh", fs.ModeSymlink | 0o777, ""},
	} {
		st, err := os.Lstat(filepath.Join(out, tc.path))
		if err != nil {
			t.Errorf("%s: %v", tc.path, err)
			continue
		}
		if st.Mode() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, st.Mode(), tc.mode)
		}
		if tc.data != "" {
			if b, _ := os.ReadFile(filepath.Join(out, tc.path)); string(b) != tc.data {
				t.Errorf("%s holds %q, want %q", tc.path, b, tc.data)
			}
		}
	}
	if l, _ := os.Readlink(filepath.Join(out, "bin/sh")); l != "/init" {
		t.Errorf("bin/sh -> %q", l)
	}
}

func TestAddRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    []File
		err  string
	}{
		{"empty path", []File{{Path: ""}}, "not a file inside"},
		{"root", []File{{Path: "/"}}, "not a file inside"},
		{"escape", []File{{Path: "../etc/passwd"}}, "not a file inside"},
		{"twice", []File{{Path: "a"}, {Path: "/a"}}, "added twice"},
		{"fifo", []File{{Path: "p", Mode: fs.ModeNamedPipe}}, "unsupported file type"},
		{"source symlink", []File{{Path: "l", Source: "/etc/hostname", Mode: fs.ModeSymlink}}, "only makes a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := New().Add(tc.f...)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Add = %v, want %q", err, tc.err)
			}
		})
	}
	a := New()
	a.Add(File{Path: "a", Data: []byte("x")}, File{Path: "a/b", Data: []byte("y")})
	if _, err := a.WriteTo(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file under a file: %v", err)
	}
	a = New()
	a.Add(File{Path: "x", Source: "/nonexistent/file"})
	if _, err := a.WriteTo(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/file") {
		t.Errorf("missing source: %v", err)
	}
}

func names(t *testing.T, b []byte) []string {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, r := range recs {
		n = append(n, r.Name)
	}
	return n
}

func TestAppend(t *testing.T) {
	base := New()
	base.Add(File{Path: "lib", Data: []byte("usr/lib"), Mode: fs.ModeSymlink}, File{Path: "usr/lib/x", Data: []byte("abc")})
	baseBytes := append(write(t, base), 'z') // odd length: the padding must realign
	add := New()
	add.Add(File{Path: "lib/modules/r/modules.dep", Data: []byte("\n")}, File{Path: "prestage", Data: []byte("elf"), Mode: 0o755})
	var out bytes.Buffer
	n, err := Append(&out, baseBytes, add)
	if err != nil || n != int64(out.Len()) {
		t.Fatalf("Append = %d, %v (wrote %d)", n, err, out.Len())
	}
	got := out.Bytes()
	if !bytes.HasPrefix(got, baseBytes) {
		t.Fatal("the base is not the archive's prefix")
	}
	rest := got[len(baseBytes):]
	pad := (4 - len(baseBytes)%4) % 4
	if !bytes.Equal(rest[:pad], make([]byte, pad)) || len(got[:len(baseBytes)+pad])%4 != 0 {
		t.Fatalf("padding %q", rest[:pad])
	}
	// lib is the base's symlink: it is not written again as a directory.
	want := []string{"lib/modules", "lib/modules/r", "lib/modules/r/modules.dep", "prestage"}
	if d := cmp.Diff(want, names(t, rest[pad:])); d != "" {
		t.Errorf("appended entries (-want, +got):\n%s", d)
	}
	// A compressed (or unknown) base: every parent is written.
	out.Reset()
	Append(&out, []byte{0x1f, 0x8b, 8, 0}, add)
	if got := names(t, out.Bytes()[4:]); got[0] != "lib" {
		t.Errorf("after an opaque base the first entry is %q, want lib", got[0])
	}
}

// TestWritePrestaged: the file is the base archive with the pre-stage
// part appended, as Append writes it.
func TestWritePrestaged(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "prestage-bin")
	if err := os.WriteFile(bin, []byte("elf"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := New()
	base.Add(File{Path: "init", Data: []byte("#!/bin/sh\n"), Mode: 0o755})
	out := filepath.Join(dir, "initramfs")
	if err := WritePrestaged(out, base, PrestageOptions{Binary: bin}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pre := New()
	pre.AddFile(PrestagePath, bin, 0o755)
	var want bytes.Buffer
	if _, err := Append(&want, write(t, base), pre); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("WritePrestaged wrote %d bytes, Append %d; they differ", len(got), want.Len())
	}
	if err := WritePrestaged(filepath.Join(dir, "no-such-dir", "x"), base, PrestageOptions{Binary: bin}); err == nil {
		t.Error("WritePrestaged into a missing directory did not fail")
	}
	if err := WritePrestaged(out, base, PrestageOptions{Binary: bin, Names: []string{"virtio_blk"}}); err == nil {
		t.Error("WritePrestaged with modules and no module tree did not fail")
	}
}
