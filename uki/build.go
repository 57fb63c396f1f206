package uki

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Input is a section to add to a stub.
type Input struct {
	Name string
	Data io.Reader // exactly Size bytes
	Size int64
}

// pageSize aligns the added sections in memory, as ukify and objcopy
// --change-section-vma do: the stub copies no section, it finds them at
// their addresses in its loaded image.
const pageSize = 4096

// sectionData is what the added sections are: initialized, readable data.
const sectionData = 0x00000040 | 0x40000000 // IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ

// Build writes to w the EFI stub (systemd-stub's linuxx64.efi.stub) with
// the sections added after its own, in order: the result is a UKI when they
// are .linux, .initrd, .cmdline and so on. The stub's headers must have room
// for the new section headers (systemd-stub's have room for a dozen more)
// and it must not be signed (sign the UKI instead). The PE checksum is left
// zero, as UEFI does not check it, and the stub's COFF symbol table, which
// no loader reads, is left out. Nothing but the stub is held in memory.
func Build(w io.Writer, stub []byte, sections []Input) error {
	f, err := Parse(bytes.NewReader(stub), int64(len(stub)))
	if err != nil {
		return fmt.Errorf("the EFI stub: %w", err)
	}
	if f.CertTableSize != 0 {
		return errors.New("the EFI stub is signed: build from an unsigned stub and sign the UKI")
	}
	if f.FileAlignment == 0 || f.FileAlignment&(f.FileAlignment-1) != 0 || f.SectionAlignment == 0 || f.SectionAlignment&(f.SectionAlignment-1) != 0 {
		return fmt.Errorf("the EFI stub: file alignment %#x or section alignment %#x is not a power of two", f.FileAlignment, f.SectionAlignment)
	}
	memAlign := uint64(max(pageSize, f.SectionAlignment))
	// Where the stub's data ends, in the file and in memory.
	rawEnd, firstRaw := uint64(f.SizeOfHeaders), uint64(len(stub))
	vaEnd := uint64(f.SizeOfImage)
	for _, s := range f.Sections {
		if s.RawSize > 0 {
			rawEnd = max(rawEnd, uint64(s.RawOffset)+uint64(s.RawSize))
			firstRaw = min(firstRaw, uint64(s.RawOffset))
		}
		vaEnd = max(vaEnd, uint64(s.VirtualAddress)+uint64(max(s.VirtualSize, s.RawSize)))
	}
	if rawEnd > uint64(len(stub)) {
		return fmt.Errorf("the EFI stub: its sections run past its end")
	}
	newTable := uint64(f.tableEnd()) + uint64(len(sections))*sectionSize
	if newTable > uint64(f.SizeOfHeaders) || newTable > firstRaw {
		return fmt.Errorf("the EFI stub's headers have no room for %d more sections (the section table would end at %#x, the headers at %#x)",
			len(sections), newTable, min(uint64(f.SizeOfHeaders), firstRaw))
	}
	head := append([]byte(nil), stub[:rawEnd]...)
	fileAlign := uint64(f.FileAlignment)
	raw := alignUp(rawEnd, fileAlign)
	va := alignUp(vaEnd, memAlign)
	var initData uint64
	seen := map[string]bool{}
	for _, s := range f.Sections {
		seen[s.Name] = true
	}
	for i, in := range sections {
		if in.Name == "" || len(in.Name) > 8 || seen[in.Name] {
			return fmt.Errorf("section name %q is empty, longer than 8 bytes, or taken", in.Name)
		}
		seen[in.Name] = true
		if in.Size <= 0 || in.Size > math.MaxUint32 {
			return fmt.Errorf("section %s: size %d is not between 1 and 4 GiB", in.Name, in.Size)
		}
		size := uint64(in.Size)
		rawSize := alignUp(size, fileAlign)
		if raw+rawSize > math.MaxUint32 || va+size > math.MaxUint32 {
			return fmt.Errorf("section %s: the image would pass 4 GiB, the PE format's limit", in.Name)
		}
		h := head[f.tableEnd()+int64(i)*sectionSize:][:sectionSize]
		clear(h)
		copy(h, in.Name)
		binary.LittleEndian.PutUint32(h[8:], uint32(size))
		binary.LittleEndian.PutUint32(h[12:], uint32(va))
		binary.LittleEndian.PutUint32(h[16:], uint32(rawSize))
		binary.LittleEndian.PutUint32(h[20:], uint32(raw))
		binary.LittleEndian.PutUint32(h[36:], sectionData)
		raw += rawSize
		va = alignUp(va+size, memAlign)
		initData += rawSize
	}
	if va > math.MaxUint32 {
		return errors.New("the image would pass 4 GiB, the PE format's limit")
	}
	coff := head[f.PEOffset+4:]
	binary.LittleEndian.PutUint16(coff[2:], uint16(len(f.Sections)+len(sections)))
	// The COFF symbol table (deprecated for images; systemd-stub carries
	// one after its sections) is dropped: the new sections take its place.
	binary.LittleEndian.PutUint32(coff[8:], 0)
	binary.LittleEndian.PutUint32(coff[12:], 0)
	opt := head[f.optOffset:]
	binary.LittleEndian.PutUint32(opt[optSizeOfInitData:], uint32(min(math.MaxUint32, uint64(binary.LittleEndian.Uint32(opt[optSizeOfInitData:]))+initData)))
	binary.LittleEndian.PutUint32(opt[optSizeOfImage:], uint32(va))
	binary.LittleEndian.PutUint32(opt[optCheckSum:], 0)

	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(head); err != nil {
		return err
	}
	pos := rawEnd
	pad := func(to uint64) error {
		_, err := bw.Write(make([]byte, to-pos))
		pos = to
		return err
	}
	if err := pad(alignUp(rawEnd, fileAlign)); err != nil {
		return err
	}
	for _, in := range sections {
		n, err := io.CopyN(bw, in.Data, in.Size)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("it ended after %d of %d bytes", n, in.Size)
			}
			return fmt.Errorf("section %s: %w", in.Name, err)
		}
		pos += uint64(n)
		if err := pad(alignUp(pos, fileAlign)); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }
