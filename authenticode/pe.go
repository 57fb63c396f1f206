package authenticode

import (
	"crypto"
	_ "crypto/sha1" // Authenticode digests: the hashes EDK2 knows
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// ErrNotPE marks an image whose PE/COFF headers cannot be read.
var ErrNotPE = errors.New("not a PE/COFF image")

// PE/COFF layout, as far as the Authenticode hash reads it (PE format
// specification; Windows Authenticode PE Signature Format, "Calculating
// the PE Image Hash"):
//
//	offset          size  field
//	0x00            2     "MZ" (EDK2 also takes an image without a DOS header)
//	0x3c            4     e_lfanew: offset of the PE signature
//	e_lfanew        4     "PE\0\0"
//	+4              20    COFF header: NumberOfSections u16 at +2,
//	                      SizeOfOptionalHeader u16 at +16
//	+24             n     optional header: magic u16 (0x10b PE32, 0x20b
//	                      PE32+), SizeOfHeaders u32 at 60, CheckSum u32 at
//	                      64, NumberOfRvaAndSizes u32 at 92 (PE32+: 108),
//	                      data directories of 8 bytes from 96 (PE32+: 112);
//	                      entry 4, the certificate table, holds its file
//	                      offset and size
//	+24+n           40×k  section headers: SizeOfRawData u32 at 16,
//	                      PointerToRawData u32 at 20
const (
	dosSize       = 0x40
	coffSize      = 20
	sectionSize   = 40
	magicPE32     = 0x10b
	magicPE32Plus = 0x20b
	certDirIndex  = 4
)

// Memory bounds. Of the image only these are held in memory: the DOS
// header, the PE signature with the COFF header, the optional header with
// the section table (their sizes are 16-bit fields, so at most 65535 +
// 65535×40 bytes, under 2.6 MiB; the headers of a real image take a few
// KiB), the certificate table (at most maxCertTable) and a buffer of
// hashBuffer bytes that the hashed ranges stream through.
const (
	maxCertTable = 1 << 20
	hashBuffer   = 1 << 20
)

// peImage is what the hash and the signature check need of an image.
type peImage struct {
	r             io.ReaderAt
	size          int64
	checksum      int64 // offset of CheckSum
	certDir       int64 // offset of the certificate table's directory entry
	hasCertDir    bool  // NumberOfRvaAndSizes > 4
	sizeOfHeaders uint32
	sections      [][2]uint32 // PointerToRawData and SizeOfRawData, in file order
	certOff       uint32      // the certificate table, from its directory entry
	certSize      uint32
	buf           []byte // the hash's buffer, made on the first hash
}

// readAt reads the n bytes of r at off, which the caller has checked lie
// within the image's size; a reader that ends before them fails with
// io.ErrUnexpectedEOF.
func readAt(r io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	m, err := r.ReadAt(b, off)
	if m == n {
		return b, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("reading %d bytes of the image at %#x: %w", n, off, err)
}

// parsePE reads the headers of the image of size bytes that r holds.
func parsePE(r io.ReaderAt, size int64) (*peImage, error) {
	if size < 0 {
		return nil, fmt.Errorf("image size %d is negative", size)
	}
	pe := int64(0)
	if size >= dosSize {
		dos, err := readAt(r, 0, dosSize)
		if err != nil {
			return nil, err
		}
		if dos[0] == 'M' && dos[1] == 'Z' {
			pe = int64(binary.LittleEndian.Uint32(dos[0x3c:]))
		}
	}
	if pe > size-4-coffSize {
		return nil, fmt.Errorf("%w: no PE signature", ErrNotPE)
	}
	nt, err := readAt(r, pe, 4+coffSize)
	if err != nil {
		return nil, err
	}
	if string(nt[:4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature", ErrNotPE)
	}
	coff := nt[4:]
	nsec := int(binary.LittleEndian.Uint16(coff[2:]))
	optOff := pe + 4 + coffSize
	optSize := int(binary.LittleEndian.Uint16(coff[16:]))
	tableOff := optOff + int64(optSize)
	if tableOff+int64(nsec*sectionSize) > size {
		return nil, fmt.Errorf("%w: the headers run past the end of the file", ErrNotPE)
	}
	hdr, err := readAt(r, optOff, optSize+nsec*sectionSize)
	if err != nil {
		return nil, err
	}
	opt, table := hdr[:optSize], hdr[optSize:]
	if len(opt) < 2 {
		return nil, fmt.Errorf("%w: no optional header", ErrNotPE)
	}
	dirs := 0
	switch m := binary.LittleEndian.Uint16(opt); m {
	case magicPE32:
		dirs = 96
	case magicPE32Plus:
		dirs = 112
	default:
		return nil, fmt.Errorf("%w: optional header magic %#x", ErrNotPE, m)
	}
	if len(opt) < dirs {
		return nil, fmt.Errorf("%w: optional header of %d bytes is too short", ErrNotPE, len(opt))
	}
	p := &peImage{
		r:             r,
		size:          size,
		checksum:      optOff + 64,
		certDir:       optOff + int64(dirs) + 8*certDirIndex,
		hasCertDir:    binary.LittleEndian.Uint32(opt[dirs-4:]) > certDirIndex,
		sizeOfHeaders: binary.LittleEndian.Uint32(opt[60:]),
	}
	end := p.checksum + 4
	if p.hasCertDir {
		if len(opt) < dirs+8*(certDirIndex+1) {
			return nil, fmt.Errorf("%w: the optional header ends before the certificate table entry", ErrNotPE)
		}
		p.certOff = binary.LittleEndian.Uint32(opt[dirs+8*certDirIndex:])
		p.certSize = binary.LittleEndian.Uint32(opt[dirs+8*certDirIndex+4:])
		end = p.certDir + 8
	}
	if int64(p.sizeOfHeaders) < end || int64(p.sizeOfHeaders) > size {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x is outside [%#x, %#x]", ErrNotPE, p.sizeOfHeaders, end, size)
	}
	hashed := uint64(p.sizeOfHeaders)
	for i := range nsec {
		s := table[i*sectionSize:]
		raw, ptr := binary.LittleEndian.Uint32(s[16:]), binary.LittleEndian.Uint32(s[20:])
		if raw == 0 {
			continue
		}
		if uint64(ptr)+uint64(raw) > uint64(size) {
			return nil, fmt.Errorf("%w: section %d's data [%#x, +%#x) lies past the end of the file (%d bytes)", ErrNotPE, i, ptr, raw, size)
		}
		p.sections = append(p.sections, [2]uint32{ptr, raw})
		hashed += uint64(raw)
	}
	// EDK2 would hash sections that overlap each other or the headers;
	// no linker makes them, and hashing them could cost the square of
	// the file's size.
	if hashed > uint64(size) {
		return nil, fmt.Errorf("%w: the headers and sections hold %d bytes, more than the file's %d: they overlap", ErrNotPE, hashed, size)
	}
	// EDK2 sorts with an insertion sort, which is stable.
	sort.SliceStable(p.sections, func(i, j int) bool { return p.sections[i][0] < p.sections[j][0] })
	return p, nil
}

// Hash returns the Authenticode SHA-256 of the PE/COFF image of size
// bytes that r holds: what a signature signs, and what a SHA-256 entry of
// db or dbx names. It holds the headers in memory and streams the rest
// through the hash.
func Hash(r io.ReaderAt, size int64) ([]byte, error) {
	p, err := parsePE(r, size)
	if err != nil {
		return nil, err
	}
	return p.hash(crypto.SHA256)
}

// hash is EDK2's HashPeImage: the headers up to SizeOfHeaders without
// CheckSum and the certificate table's directory entry; then the sections
// of non-zero SizeOfRawData by PointerToRawData; then, when the file is
// longer than the bytes hashed so far, the data from that length to the
// end of the file less the certificate table's size.
func (p *peImage) hash(h crypto.Hash) ([]byte, error) {
	var ranges [][2]int64 // offset and length
	if p.hasCertDir {
		ranges = append(ranges, [2]int64{0, p.checksum}, [2]int64{p.checksum + 4, p.certDir - p.checksum - 4},
			[2]int64{p.certDir + 8, int64(p.sizeOfHeaders) - p.certDir - 8})
	} else {
		ranges = append(ranges, [2]int64{0, p.checksum}, [2]int64{p.checksum + 4, int64(p.sizeOfHeaders) - p.checksum - 4})
	}
	sum := int64(p.sizeOfHeaders)
	for _, s := range p.sections {
		ranges = append(ranges, [2]int64{int64(s[0]), int64(s[1])})
		sum += int64(s[1])
	}
	if p.size > sum {
		cert := int64(0)
		if p.hasCertDir {
			cert = int64(p.certSize)
		}
		switch {
		case p.size > sum+cert:
			ranges = append(ranges, [2]int64{sum, p.size - cert - sum})
		case p.size < sum+cert:
			return nil, fmt.Errorf("%w: a %d-byte certificate table does not fit after the %d bytes of headers and sections in %d bytes",
				ErrNotPE, cert, sum, p.size)
		}
	}
	if p.buf == nil {
		p.buf = make([]byte, min(hashBuffer, max(p.size, 1)))
	}
	d := h.New()
	for _, rg := range ranges {
		n, err := io.CopyBuffer(d, io.NewSectionReader(p.r, rg[0], rg[1]), p.buf)
		if err == nil && n != rg[1] {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, fmt.Errorf("reading %d bytes of the image at %#x: %w", rg[1], rg[0], err)
		}
	}
	return d.Sum(nil), nil
}
