package uki

import (
	"bytes"
	"io"
	"testing"
)

// FuzzOpen feeds arbitrary files to Open: it must not panic, and every
// section of a file it accepts lies within the file and reads in full.
func FuzzOpen(f *testing.F) {
	f.Add(build(f, tinyStub(), parts{linux: "kernel", initrd: "initrd", cmdline: "console=ttyS0", osrel: "ID=x\nVERSION_ID=1\n"}))
	f.Add(tinyStub())
	f.Fuzz(func(t *testing.T, b []byte) {
		pf, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, s := range pf.Sections {
			if s.Size() > 0 && s.Offset()+s.Size() > int64(len(b)) {
				t.Fatalf("section %q [%d, +%d) outside a %d-byte file", s.Name, s.Offset(), s.Size(), len(b))
			}
		}
		u, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, r := range []*io.SectionReader{u.Kernel(), u.Initramfs()} {
			if n, err := io.Copy(io.Discard, r); err != nil || n != r.Size() {
				t.Fatalf("read %d of %d bytes: %v", n, r.Size(), err)
			}
		}
	})
}

// FuzzRoundTrip builds a UKI from arbitrary sections and reads it back:
// the same bytes come out of Open.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("bzImage"), []byte("cpio"), "console=ttyS0 stagehand.slot=b", "6.1.0-56-amd64")
	f.Fuzz(func(t *testing.T, linux, initrd []byte, cmdline, uname string) {
		if len(linux) == 0 {
			return
		}
		in := []Input{{Name: SectionLinux, Data: bytes.NewReader(linux), Size: int64(len(linux))}}
		if len(initrd) > 0 {
			in = append(in, Input{Name: SectionInitrd, Data: bytes.NewReader(initrd), Size: int64(len(initrd))})
		}
		for _, s := range []struct{ name, text string }{{SectionCmdline, cmdline}, {SectionUname, uname}} {
			if s.text != "" {
				in = append(in, Input{Name: s.name, Data: bytes.NewReader([]byte(s.text)), Size: int64(len(s.text))})
			}
		}
		var out bytes.Buffer
		if err := Build(&out, tinyStub(), in); err != nil {
			t.Fatalf("Build: %v", err)
		}
		u, err := Open(bytes.NewReader(out.Bytes()), int64(out.Len()))
		if err != nil {
			t.Fatalf("Open of a built UKI: %v", err)
		}
		k, _ := io.ReadAll(u.Kernel())
		i, _ := io.ReadAll(u.Initramfs())
		if !bytes.Equal(k, linux) || !bytes.Equal(i, initrd) {
			t.Fatalf("kernel or initrd changed: %d/%d and %d/%d bytes", len(k), len(linux), len(i), len(initrd))
		}
		if want := trimText(cmdline); u.Cmdline != want {
			t.Fatalf("cmdline %q, want %q", u.Cmdline, want)
		}
		if want := trimText(uname); u.Uname != want {
			t.Fatalf("uname %q, want %q", u.Uname, want)
		}
	})
}

// trimText is what Open makes of a text section.
func trimText(s string) string {
	if i := bytes.IndexByte([]byte(s), 0); i >= 0 {
		s = s[:i]
	}
	return string(bytes.TrimRight([]byte(s), " \t\r\n"))
}
