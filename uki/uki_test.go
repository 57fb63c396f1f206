package uki

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// systemdStub is Debian's systemd-stub (systemd-boot-efi, installed by make deps).
const systemdStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// tinyStub is a minimal PE32+ EFI application made by hand: headers of
// 0x400 bytes and one .text section, as a linker lays out systemd-stub.
func tinyStub() []byte {
	b := make([]byte, 0x600)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x40)
	copy(b[0x40:], "PE\x00\x00")
	coff := b[0x44:]
	binary.LittleEndian.PutUint16(coff[0:], 0x8664)
	binary.LittleEndian.PutUint16(coff[2:], 1)
	binary.LittleEndian.PutUint16(coff[16:], 240)
	binary.LittleEndian.PutUint16(coff[18:], 0x206)
	opt := b[0x58:]
	binary.LittleEndian.PutUint16(opt[0:], magicPE32Plus)
	binary.LittleEndian.PutUint32(opt[16:], 0x1000) // entry point
	binary.LittleEndian.PutUint32(opt[optSectionAlignment:], 0x200)
	binary.LittleEndian.PutUint32(opt[optFileAlignment:], 0x200)
	binary.LittleEndian.PutUint32(opt[optSizeOfImage:], 0x1200)
	binary.LittleEndian.PutUint32(opt[optSizeOfHeaders:], 0x400)
	binary.LittleEndian.PutUint16(opt[68:], 10) // EFI application
	binary.LittleEndian.PutUint32(opt[108:], 16)
	sec := b[0x58+240:]
	copy(sec, ".text")
	binary.LittleEndian.PutUint32(sec[8:], 0x10)
	binary.LittleEndian.PutUint32(sec[12:], 0x1000)
	binary.LittleEndian.PutUint32(sec[16:], 0x200)
	binary.LittleEndian.PutUint32(sec[20:], 0x400)
	binary.LittleEndian.PutUint32(sec[36:], 0x60000020)
	copy(b[0x400:], "\xc3 tiny stub code")
	return b
}

type parts struct{ linux, initrd, cmdline, osrel, uname string }

func (p parts) inputs() []Input {
	var in []Input
	for _, s := range []struct{ name, data string }{
		{SectionOSRel, p.osrel}, {SectionCmdline, p.cmdline}, {SectionUname, p.uname},
		{SectionInitrd, p.initrd}, {SectionLinux, p.linux},
	} {
		if s.data != "" {
			in = append(in, Input{Name: s.name, Data: strings.NewReader(s.data), Size: int64(len(s.data))})
		}
	}
	return in
}

func build(t testing.TB, stub []byte, p parts) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := Build(&out, stub, p.inputs()); err != nil {
		t.Fatalf("Build: %v", err)
	}
	return out.Bytes()
}

func read(t testing.TB, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBuildOpen builds UKIs from the real systemd-stub and the tiny one,
// reads them back with Open, and checks the layout with the standard
// library's debug/pe, an independent reader.
func TestBuildOpen(t *testing.T) {
	real, err := os.ReadFile(systemdStub)
	if err != nil {
		t.Fatalf("%v (Debian package systemd-boot-efi: run make deps)", err)
	}
	p := parts{
		linux: strings.Repeat("K", 5000) + "end", initrd: strings.Repeat("I", 700),
		cmdline: "console=ttyS0 stagehand.slot=b", osrel: "ID=stagehand\nPRETTY_NAME=\"stagehand test\"\nVERSION_ID=v2\n", uname: "6.1.0-56-amd64",
	}
	for name, stub := range map[string][]byte{"systemd-stub": real, "tiny": tinyStub()} {
		t.Run(name, func(t *testing.T) {
			b := build(t, stub, p)
			u, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			got := parts{read(t, u.Kernel()), read(t, u.Initramfs()), u.Cmdline, u.OSRel + "\n", u.Uname}
			if d := cmp.Diff(p, got, cmp.AllowUnexported(parts{})); d != "" {
				t.Errorf("sections read back (-want, +got):\n%s", d)
			}
			if v := u.Version(); v != "v2" {
				t.Errorf("Version = %q, want v2", v)
			}
			// debug/pe sees the same sections, the stub's first and
			// unchanged, in ascending non-overlapping memory ranges
			// within SizeOfImage.
			pf, err := pe.NewFile(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("debug/pe: %v", err)
			}
			sf, _ := pe.NewFile(bytes.NewReader(stub))
			if len(pf.Sections) != len(sf.Sections)+5 {
				t.Fatalf("%d sections, want %d", len(pf.Sections), len(sf.Sections)+5)
			}
			var end uint32
			for i, s := range pf.Sections {
				if i < len(sf.Sections) && s.SectionHeader != sf.Sections[i].SectionHeader {
					t.Errorf("stub section %s changed: %+v, was %+v", s.Name, s.SectionHeader, sf.Sections[i].SectionHeader)
				}
				if s.VirtualAddress < end {
					t.Errorf("section %s at %#x overlaps the one before (ending %#x)", s.Name, s.VirtualAddress, end)
				}
				end = s.VirtualAddress + s.VirtualSize
				if s.VirtualSize == 0 {
					end = s.VirtualAddress + s.Size
				}
				if i >= len(sf.Sections) && (s.VirtualAddress%pageSize != 0 || s.Offset%0x200 != 0) {
					t.Errorf("section %s is at %#x in memory and %#x in the file: not aligned", s.Name, s.VirtualAddress, s.Offset)
				}
			}
			oh := pf.OptionalHeader.(*pe.OptionalHeader64)
			if oh.SizeOfImage < end || oh.SizeOfImage%oh.SectionAlignment != 0 {
				t.Errorf("SizeOfImage %#x: sections end at %#x, alignment %#x", oh.SizeOfImage, end, oh.SectionAlignment)
			}
			data, err := pf.Section(SectionLinux).Data()
			if err != nil || !strings.HasPrefix(string(data), p.linux) {
				t.Errorf("debug/pe reads .linux as %d bytes (%v)", len(data), err)
			}
		})
	}
}

// TestOpenRefuses: files that are not UKIs, or lie about their sizes, are
// errors naming what is wrong.
func TestOpenRefuses(t *testing.T) {
	good := build(t, tinyStub(), parts{linux: "kernel", cmdline: "x"})
	f, err := Parse(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	linux, _ := f.Section(SectionLinux)
	secHdr := func(i int) int { return int(f.optOffset) + int(f.optSize) + i*sectionSize }
	patch := func(at int, v uint32) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint32(b[at:], v)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotPE, "too short"},
		{"no MZ", append([]byte("XX"), good[2:]...), ErrNotPE, "MZ"},
		{"PE offset past the end", patch(0x3c, 0xffffff00), ErrNotPE, "past the end"},
		{"no PE signature", patch(0x40, 0), ErrNotPE, "no PE signature"},
		{"too many sections", patch(0x44, 0xffff<<16|0x8664), ErrNotPE, "sections"},
		{"bad magic", patch(0x58, 0x1234), ErrNotPE, "magic"},
		{"section past the end", patch(secHdr(len(f.Sections)-1)+20, uint32(len(good))), ErrNotPE, "past the end"},
		{"huge raw size", patch(secHdr(len(f.Sections)-1)+16, 0xffffffff), ErrNotPE, "past the end"},
		{"truncated", good[:linux.RawOffset+1], ErrNotPE, "past the end"},
		{"no .linux", build(t, tinyStub(), parts{cmdline: "x", initrd: "i"}), ErrNotUKI, ".linux"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(bytes.NewReader(tc.b), int64(len(tc.b)))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Open: %v, want %v with %q", err, tc.want, tc.msg)
			}
		})
	}
}

// TestBuildRefuses: inputs Build cannot make a correct image from.
func TestBuildRefuses(t *testing.T) {
	signed := tinyStub()
	binary.LittleEndian.PutUint32(signed[0x58+112+8*certDirIndex+4:], 0x100)
	full := tinyStub()
	binary.LittleEndian.PutUint32(full[0x58+optSizeOfHeaders:], 0x58+240+40+40) // room for one more header only
	many := parts{linux: "k", initrd: "i", cmdline: "c"}.inputs()
	for _, tc := range []struct {
		name string
		stub []byte
		in   []Input
		msg  string
	}{
		{"not PE", []byte("hello"), many, "EFI stub"},
		{"signed stub", signed, many, "signed"},
		{"no room", full, many, "no room"},
		{"long name", tinyStub(), []Input{{Name: ".toolongname", Data: strings.NewReader("x"), Size: 1}}, "longer than 8"},
		{"taken name", tinyStub(), []Input{{Name: ".text", Data: strings.NewReader("x"), Size: 1}}, "taken"},
		{"empty section", tinyStub(), []Input{{Name: ".linux", Data: strings.NewReader(""), Size: 0}}, "size 0"},
		{"short data", tinyStub(), []Input{{Name: ".linux", Data: strings.NewReader("ab"), Size: 3}}, "ended after 2 of 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Build(io.Discard, tc.stub, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Build: %v, want %q", err, tc.msg)
			}
		})
	}
}

func TestOSRelease(t *testing.T) {
	got := OSRelease("# comment\nID=debian\nPRETTY_NAME=\"Debian 12\"\nVERSION_ID='12'\nbroken line\n=x\n")
	want := map[string]string{"ID": "debian", "PRETTY_NAME": "Debian 12", "VERSION_ID": "12"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want, +got):\n%s", d)
	}
}
