package efivar

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"unicode/utf16"
)

// LoadOptionActive marks a load option the boot manager may start; it
// skips the others (UEFI specification 3.1.3).
const LoadOptionActive = 0x1

// LoadOption is an EFI_LOAD_OPTION, the content of a Boot#### variable
// (UEFI specification 3.1.3):
//
//	offset  size  field
//	0       4     Attributes, little-endian
//	4       2     FilePathListLength, little-endian
//	6       d     Description, UTF-16LE with a NUL terminator
//	6+d     n     FilePathList: n = FilePathListLength bytes of device paths
//	6+d+n   rest  OptionalData, passed to the image as its load options
type LoadOption struct {
	Attributes   uint32
	Description  string
	FilePath     []byte // FilePathList; see DevicePath
	OptionalData []byte
}

// Marshal returns the option's EFI_LOAD_OPTION bytes.
func (o LoadOption) Marshal() ([]byte, error) {
	if len(o.FilePath) > 0xffff {
		return nil, fmt.Errorf("load option %q: file path list of %d bytes, more than its 16-bit length holds", o.Description, len(o.FilePath))
	}
	desc, err := EncodeString(o.Description)
	if err != nil {
		return nil, fmt.Errorf("load option description: %w", err)
	}
	b := make([]byte, 0, 6+len(desc)+len(o.FilePath)+len(o.OptionalData))
	b = binary.LittleEndian.AppendUint32(b, o.Attributes)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(o.FilePath)))
	b = append(b, desc...)
	b = append(b, o.FilePath...)
	return append(b, o.OptionalData...), nil
}

// ParseLoadOption parses an EFI_LOAD_OPTION. The description must end with
// a NUL and the file path list fit in b. The fields do not alias b.
func ParseLoadOption(b []byte) (LoadOption, error) {
	if len(b) < 6 {
		return LoadOption{}, fmt.Errorf("load option of %d bytes, shorter than its 6-byte header", len(b))
	}
	o := LoadOption{Attributes: binary.LittleEndian.Uint32(b)}
	fpl := int(binary.LittleEndian.Uint16(b[4:]))
	var desc []uint16
	off := 6
	for ; ; off += 2 {
		if off+2 > len(b) {
			return LoadOption{}, fmt.Errorf("load option description has no NUL terminator within %d bytes", len(b))
		}
		c := binary.LittleEndian.Uint16(b[off:])
		if c == 0 {
			off += 2
			break
		}
		desc = append(desc, c)
	}
	o.Description = string(utf16.Decode(desc))
	if fpl > len(b)-off {
		return LoadOption{}, fmt.Errorf("load option %q: file path list of %d bytes, only %d left", o.Description, fpl, len(b)-off)
	}
	o.FilePath = clone(b[off : off+fpl])
	o.OptionalData = clone(b[off+fpl:])
	return o, nil
}

// clone copies b; nil when b is empty, so that parsed values compare equal
// to those built with empty fields.
func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
