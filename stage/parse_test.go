package stage

import (
	"archive/tar"
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in        string
		transport Transport
		path, tag string
		ref       string
		err       string
	}{
		{in: "127.0.0.1:5000/stagehand/os:v2", transport: Registry, ref: "127.0.0.1:5000/stagehand/os:v2"},
		{in: "docker://ghcr.io/siderolabs/installer:v1.9.0", transport: Registry, ref: "ghcr.io/siderolabs/installer:v1.9.0"},
		{in: "ghcr.io/x/y@sha256:" + strings.Repeat("a", 64), transport: Registry, ref: "ghcr.io/x/y@sha256:" + strings.Repeat("a", 64)},
		{in: "oci:/var/images", transport: OCILayout, path: "/var/images"},
		{in: "oci:images:v2", transport: OCILayout, path: "images", tag: "v2"},
		{in: "docker-archive:os.tar", transport: DockerArchive, path: "os.tar"},
		{in: "docker-archive:os.tar:stagehand/os:v2", transport: DockerArchive, path: "os.tar", tag: "stagehand/os:v2"},
		{in: "", err: "empty"},
		{in: "oci:", err: "no path"},
		{in: "ghcr.io/x/y", err: "no tag or digest"},
		{in: "UPPER/case:v1", err: "malformed"},
		{in: "ghcr.io/x/y@sha256:short", err: "malformed"},
	} {
		s, err := ParseSource(tc.in, false)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSource(%q) = %v, want error %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSource(%q): %v", tc.in, err)
			continue
		}
		got := ""
		if s.Ref != nil {
			got = s.Ref.String()
		}
		if s.Transport != tc.transport || s.Path != tc.path || s.Tag != tc.tag || got != tc.ref || s.String() != tc.in {
			t.Errorf("ParseSource(%q) = %+v (ref %q)", tc.in, s, got)
		}
	}
}

func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"127.0.0.1:5000/os:v2", "oci:dir:tag", "docker-archive:f.tar", "docker://a/b@sha256:" + strings.Repeat("0", 64)} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, insecure bool) {
		src, err := ParseSource(s, insecure)
		if err != nil {
			return
		}
		if src.String() != s {
			t.Fatalf("String() = %q, want %q", src.String(), s)
		}
		if src.Transport == Registry && src.Ref == nil || src.Transport != Registry && src.Path == "" {
			t.Fatalf("incomplete source %+v", src)
		}
	})
}

func TestCleanEntry(t *testing.T) {
	for _, tc := range []struct {
		h    tar.Header
		want string // cleaned path, or "error: ..."
	}{
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/install/amd64/vmlinuz"}, "usr/install/amd64/vmlinuz"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "./usr//install/./x"}, "usr/install/x"},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/"}, "usr"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "a/../b"}, "b"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "a/../../b"}, "error: climbs out"},
		{tar.Header{Typeflag: tar.TypeReg, Name: ".."}, "error: climbs out"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "/etc/passwd"}, "error: is absolute"},
		{tar.Header{Typeflag: tar.TypeReg, Name: ""}, "error: empty path"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "a\x00b"}, "error: NUL"},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "/bin/busybox"}, "bin/sh"},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/lib/x", Linkname: "../../etc"}, "usr/lib/x"},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/lib/x", Linkname: "../../../etc"}, "error: leaves the image tree"},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "x", Linkname: ".."}, "error: leaves the image tree"},
		{tar.Header{Typeflag: tar.TypeLink, Name: "usr/a", Linkname: "usr/b"}, "usr/a"},
		{tar.Header{Typeflag: tar.TypeLink, Name: "usr/a", Linkname: "../b"}, "error: climbs out"},
		{tar.Header{Typeflag: tar.TypeLink, Name: "usr/a", Linkname: "/etc/shadow"}, "error: is absolute"},
		{tar.Header{Typeflag: tar.TypeChar, Name: "dev/null"}, "error: device node"},
		{tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda"}, "error: device node"},
		{tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo"}, "run/fifo"},
		{tar.Header{Typeflag: 'Z', Name: "odd"}, "error: unsupported type"},
	} {
		got, err := CleanEntry(&tc.h)
		if err != nil {
			got = "error: " + err.Error()
		}
		if !strings.HasPrefix(tc.want, "error: ") && got != tc.want || strings.HasPrefix(tc.want, "error: ") && !strings.Contains(got, strings.TrimPrefix(tc.want, "error: ")) {
			t.Errorf("CleanEntry(%q %c -> %q) = %q, want %q", tc.h.Name, tc.h.Typeflag, tc.h.Linkname, got, tc.want)
		}
	}
}

// FuzzCleanEntry checks that whatever the filter lets through stays in the
// tree: a relative, clean path, and links that resolve inside.
func FuzzCleanEntry(f *testing.F) {
	f.Add(byte(tar.TypeReg), "usr/install/amd64/vmlinuz", "")
	f.Add(byte(tar.TypeSymlink), "usr/lib/x", "../../etc")
	f.Add(byte(tar.TypeLink), "a", "b/../c")
	f.Fuzz(func(t *testing.T, typ byte, name, link string) {
		h := &tar.Header{Typeflag: typ, Name: name, Linkname: link}
		p, err := CleanEntry(h)
		if err != nil {
			return
		}
		if strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "\x00") {
			t.Fatalf("%q accepted as %q", name, p)
		}
		if typ == tar.TypeChar || typ == tar.TypeBlock {
			t.Fatal("device node accepted")
		}
		if c := cleanRel(link); typ == tar.TypeLink && (strings.HasPrefix(link, "/") || c == ".." || strings.HasPrefix(c, "../")) {
			t.Fatalf("hard link to %q accepted", link)
		}
	})
}

func cleanRel(p string) string {
	c, err := inTree(p, "x")
	if err != nil {
		return ".."
	}
	return c
}
