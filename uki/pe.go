package uki

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNotPE marks a file that is not a PE/COFF image this package reads.
var ErrNotPE = errors.New("not a PE/COFF EFI image")

// PE/COFF layout, as far as this package reads it (the PE format
// specification, "Optional Header Image Only"):
//
//	offset            size  field
//	0x00              2     "MZ"
//	0x3c              4     e_lfanew: offset of the PE signature
//	e_lfanew          4     "PE\0\0"
//	+4                20    COFF header: machine u16, NumberOfSections u16,
//	                        time u32, symbols u32, nsyms u32,
//	                        SizeOfOptionalHeader u16, Characteristics u16
//	+24               n     optional header (magic 0x20b: PE32+, 0x10b: PE32)
//	+24+n             40×k  section headers: name [8], VirtualSize u32,
//	                        VirtualAddress u32, SizeOfRawData u32,
//	                        PointerToRawData u32, 12 bytes of relocations and
//	                        line numbers, Characteristics u32
const (
	peOffsetField = 0x3c
	coffSize      = 20
	sectionSize   = 40
	magicPE32     = 0x10b
	magicPE32Plus = 0x20b
	maxSections   = 96 // the PE specification's limit for a loader
	// Offsets in the optional header.
	optSizeOfInitData   = 8
	optSectionAlignment = 32
	optFileAlignment    = 36
	optSizeOfImage      = 56
	optSizeOfHeaders    = 60
	optCheckSum         = 64
	// The data directories start at 96 (PE32) or 112 (PE32+), after
	// NumberOfRvaAndSizes; entry 4 is the certificate table.
	certDirIndex = 4
)

// Section is one section of a PE file.
type Section struct {
	Name            string
	VirtualAddress  uint32
	VirtualSize     uint32
	RawOffset       uint32 // PointerToRawData
	RawSize         uint32 // SizeOfRawData
	Characteristics uint32
}

// Offset and Size are the bytes of the file that hold the section's
// contents: its raw data, cut to its virtual size when that is smaller (as
// systemd-stub and systemd-boot read .cmdline or .osrel).
func (s Section) Offset() int64 { return int64(s.RawOffset) }

// Size is the length of the section's contents in the file; see Offset.
func (s Section) Size() int64 {
	if s.VirtualSize != 0 && s.VirtualSize < s.RawSize {
		return int64(s.VirtualSize)
	}
	return int64(s.RawSize)
}

// File is the header of a PE image: enough to find its sections and to
// append new ones.
type File struct {
	Size             int64 // the file's length
	PEOffset         uint32
	Magic            uint16 // magicPE32 or magicPE32Plus
	SectionAlignment uint32
	FileAlignment    uint32
	SizeOfImage      uint32
	SizeOfHeaders    uint32
	CertTableSize    uint32 // 0 when the image carries no signature
	Sections         []Section
	optOffset        uint32 // where the optional header starts
	optSize          uint16
}

// Parse reads the PE headers of the size-byte file r. Every offset it
// returns is checked to lie within the file; a malformed file is an error
// wrapping ErrNotPE, never a panic.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	if size < 0x40 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrNotPE, size)
	}
	dos := make([]byte, 0x40)
	if _, err := r.ReadAt(dos, 0); err != nil {
		return nil, fmt.Errorf("reading the DOS header: %w", err)
	}
	if dos[0] != 'M' || dos[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ signature", ErrNotPE)
	}
	f := &File{Size: size, PEOffset: binary.LittleEndian.Uint32(dos[peOffsetField:])}
	if int64(f.PEOffset)+4+coffSize > size {
		return nil, fmt.Errorf("%w: the PE header offset %#x lies past the end (%d bytes)", ErrNotPE, f.PEOffset, size)
	}
	hdr := make([]byte, 4+coffSize)
	if _, err := r.ReadAt(hdr, int64(f.PEOffset)); err != nil {
		return nil, fmt.Errorf("reading the PE header: %w", err)
	}
	if string(hdr[:4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature at %#x", ErrNotPE, f.PEOffset)
	}
	nsec := int(binary.LittleEndian.Uint16(hdr[4+2:]))
	f.optSize = binary.LittleEndian.Uint16(hdr[4+16:])
	f.optOffset = f.PEOffset + 4 + coffSize
	if nsec > maxSections {
		return nil, fmt.Errorf("%w: %d sections, more than %d", ErrNotPE, nsec, maxSections)
	}
	tableEnd := int64(f.optOffset) + int64(f.optSize) + int64(nsec)*sectionSize
	if tableEnd > size {
		return nil, fmt.Errorf("%w: the headers run past the end of the file", ErrNotPE)
	}
	opt := make([]byte, f.optSize)
	if _, err := r.ReadAt(opt, int64(f.optOffset)); err != nil {
		return nil, fmt.Errorf("reading the optional header: %w", err)
	}
	if len(opt) < 2 {
		return nil, fmt.Errorf("%w: no optional header", ErrNotPE)
	}
	f.Magic = binary.LittleEndian.Uint16(opt)
	dirs := 0
	switch f.Magic {
	case magicPE32:
		dirs = 96
	case magicPE32Plus:
		dirs = 112
	default:
		return nil, fmt.Errorf("%w: optional header magic %#x", ErrNotPE, f.Magic)
	}
	if len(opt) < dirs {
		return nil, fmt.Errorf("%w: optional header of %d bytes is too short", ErrNotPE, len(opt))
	}
	f.SectionAlignment = binary.LittleEndian.Uint32(opt[optSectionAlignment:])
	f.FileAlignment = binary.LittleEndian.Uint32(opt[optFileAlignment:])
	f.SizeOfImage = binary.LittleEndian.Uint32(opt[optSizeOfImage:])
	f.SizeOfHeaders = binary.LittleEndian.Uint32(opt[optSizeOfHeaders:])
	ndirs := binary.LittleEndian.Uint32(opt[dirs-4:])
	if ndirs > certDirIndex && len(opt) >= dirs+8*(certDirIndex+1) {
		f.CertTableSize = binary.LittleEndian.Uint32(opt[dirs+8*certDirIndex+4:])
	}
	tab := make([]byte, nsec*sectionSize)
	if _, err := r.ReadAt(tab, int64(f.optOffset)+int64(f.optSize)); err != nil {
		return nil, fmt.Errorf("reading the section table: %w", err)
	}
	for i := 0; i < nsec; i++ {
		b := tab[i*sectionSize : (i+1)*sectionSize]
		s := Section{
			Name:            strings.TrimRight(string(b[:8]), "\x00"),
			VirtualSize:     binary.LittleEndian.Uint32(b[8:]),
			VirtualAddress:  binary.LittleEndian.Uint32(b[12:]),
			RawSize:         binary.LittleEndian.Uint32(b[16:]),
			RawOffset:       binary.LittleEndian.Uint32(b[20:]),
			Characteristics: binary.LittleEndian.Uint32(b[36:]),
		}
		if s.RawSize > 0 && int64(s.RawOffset)+int64(s.RawSize) > size {
			return nil, fmt.Errorf("%w: section %q's data [%#x, %#x) lies past the end of the file (%d bytes)",
				ErrNotPE, s.Name, s.RawOffset, int64(s.RawOffset)+int64(s.RawSize), size)
		}
		f.Sections = append(f.Sections, s)
	}
	return f, nil
}

// Section returns the first section called name.
func (f *File) Section(name string) (Section, bool) {
	for _, s := range f.Sections {
		if s.Name == name {
			return s, true
		}
	}
	return Section{}, false
}

// tableEnd is where the section table ends.
func (f *File) tableEnd() int64 {
	return int64(f.optOffset) + int64(f.optSize) + int64(len(f.Sections))*sectionSize
}
