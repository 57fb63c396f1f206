package uki

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The sections of a UKI (UAPI.5, the Unified Kernel Image specification).
const (
	SectionLinux   = ".linux"   // the kernel, a bzImage
	SectionInitrd  = ".initrd"  // the initramfs
	SectionCmdline = ".cmdline" // the kernel command line
	SectionOSRel   = ".osrel"   // os-release: systemd-boot's title and version
	SectionUname   = ".uname"   // the kernel's release (uname -r)
	// SectionPCRPKey is the PEM public key whose signatures of PCR 11
	// policies an OS accepts (systemd-cryptenroll --tpm2-public-key);
	// systemd-stub measures it into PCR 11 like the sections above.
	SectionPCRPKey = ".pcrpkey"
	// SectionPCRSig holds systemd-measure's signed PCR 11 policies (JSON);
	// systemd-stub does not measure it, as it signs the measured sections.
	SectionPCRSig = ".pcrsig"
)

// ErrNotUKI marks a PE file without the sections of a UKI.
var ErrNotUKI = errors.New("not a unified kernel image")

// maxText bounds the text sections read into memory: a command line, an
// os-release or a release string is a few hundred bytes, and a hostile
// image must not make the reader allocate its size field.
const maxText = 64 << 10

// Image is a UKI's sections, read from its file.
type Image struct {
	File    *File
	Linux   Section
	Initrd  Section // zero when the UKI has no initramfs
	Cmdline string  // the embedded command line, trailing NULs and blanks dropped
	OSRel   string
	Uname   string
	r       io.ReaderAt
}

// Open reads the UKI of size bytes in r: it needs a .linux section; the
// others are optional. The text sections are read into memory (at most
// 64 KiB each), the kernel and initramfs are left in r.
func Open(r io.ReaderAt, size int64) (*Image, error) {
	f, err := Parse(r, size)
	if err != nil {
		return nil, err
	}
	u := &Image{File: f, r: r}
	var ok bool
	if u.Linux, ok = f.Section(SectionLinux); !ok || u.Linux.Size() == 0 {
		return nil, fmt.Errorf("%w: no %s section (the kernel)", ErrNotUKI, SectionLinux)
	}
	u.Initrd, _ = f.Section(SectionInitrd)
	for _, t := range []struct {
		name string
		to   *string
	}{{SectionCmdline, &u.Cmdline}, {SectionOSRel, &u.OSRel}, {SectionUname, &u.Uname}} {
		s, ok := f.Section(t.name)
		if !ok {
			continue
		}
		if s.Size() > maxText {
			return nil, fmt.Errorf("%w: section %s is %d bytes, more than %d", ErrNotUKI, t.name, s.Size(), maxText)
		}
		b := make([]byte, s.Size())
		if _, err := r.ReadAt(b, s.Offset()); err != nil {
			return nil, fmt.Errorf("reading section %s: %w", t.name, err)
		}
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		*t.to = strings.TrimRight(string(b), " \t\r\n")
	}
	return u, nil
}

// Kernel reads the .linux section.
func (u *Image) Kernel() *io.SectionReader {
	return io.NewSectionReader(u.r, u.Linux.Offset(), u.Linux.Size())
}

// Whole reads the whole file.
func (u *Image) Whole() *io.SectionReader { return io.NewSectionReader(u.r, 0, u.File.Size) }

// Initramfs reads the .initrd section; it is empty when there is none.
func (u *Image) Initramfs() *io.SectionReader {
	return io.NewSectionReader(u.r, u.Initrd.Offset(), u.Initrd.Size())
}

// Version is the OS version in .osrel (IMAGE_VERSION, else VERSION_ID,
// else VERSION, as systemd-boot picks it), or "".
func (u *Image) Version() string {
	vals := OSRelease(u.OSRel)
	for _, k := range []string{"IMAGE_VERSION", "VERSION_ID", "VERSION"} {
		if v := vals[k]; v != "" {
			return v
		}
	}
	return ""
}

// OSRelease reads os-release text: KEY=VALUE lines, the value's one pair of
// quotes removed, comments and malformed lines skipped.
func OSRelease(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || line[0] == '#' {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[k] = v
	}
	return out
}
