package efivar

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// A device path (UEFI specification, chapter 10) is a list of nodes, each
//
//	offset  size  field
//	0       1     Type
//	1       1     SubType
//	2       2     Length, little-endian, this header included (≥ 4)
//	4       n     data
//
// ending with the End of Entire Device Path node (0x7f, 0xff). A load
// option's FilePathList starts with one.

// Device path node types and subtypes used here.
const (
	MediaType          = 0x04 // Media Device Path
	HardDriveSubType   = 0x01 // Media: Hard Drive
	FilePathSubType    = 0x04 // Media: File Path
	EndType            = 0x7f // End of Hardware Device Path
	EndEntireSubType   = 0xff // End: End Entire Device Path
	EndInstanceSubType = 0x01 // End: End This Instance of a Device Path
)

// hardDriveLen is the length of a Hard Drive node, header included.
const hardDriveLen = 42

// DevicePathNode is one node of a device path.
type DevicePathNode struct {
	Type    uint8
	SubType uint8
	Data    []byte // after the 4-byte header
}

// Marshal returns the node's bytes; an error when its data is too long for
// the 16-bit length.
func (n DevicePathNode) Marshal() ([]byte, error) {
	if 4+len(n.Data) > 0xffff {
		return nil, fmt.Errorf("device path node %#x/%#x: %d bytes of data, more than a node holds", n.Type, n.SubType, len(n.Data))
	}
	b := []byte{n.Type, n.SubType}
	b = binary.LittleEndian.AppendUint16(b, uint16(4+len(n.Data)))
	return append(b, n.Data...), nil
}

// ParseDevicePath parses the first device path of b, up to its End Entire
// node; bytes after it (more paths of a FilePathList) are ignored. The end
// node is not returned; End Instance nodes are. The nodes' data are copies.
func ParseDevicePath(b []byte) ([]DevicePathNode, error) {
	var nodes []DevicePathNode
	for off := 0; ; {
		if len(b)-off < 4 {
			return nil, fmt.Errorf("device path: no end node within %d bytes", len(b))
		}
		typ, sub := b[off], b[off+1]
		n := int(binary.LittleEndian.Uint16(b[off+2:]))
		if n < 4 || n > len(b)-off {
			return nil, fmt.Errorf("device path node %#x/%#x at offset %d: length %d, want 4 to %d", typ, sub, off, n, len(b)-off)
		}
		if typ == EndType && sub == EndEntireSubType {
			return nodes, nil
		}
		nodes = append(nodes, DevicePathNode{Type: typ, SubType: sub, Data: clone(b[off+4 : off+n])})
		off += n
	}
}

// DevicePath concatenates nodes and ends them with the End Entire node,
// unless the last one already is that node.
func DevicePath(nodes ...[]byte) []byte {
	var b []byte
	for _, n := range nodes {
		b = append(b, n...)
	}
	if k := len(nodes); k > 0 && bytes.Equal(nodes[k-1], EndNode()) {
		return b
	}
	return append(b, EndNode()...)
}

// EndNode returns the End of Entire Device Path node.
func EndNode() []byte { return []byte{EndType, EndEntireSubType, 4, 0} }

// HardDrive is a Hard Drive node for a GPT partition.
type HardDrive struct {
	PartitionNumber uint32 // 1 for the first entry of the partition table
	StartLBA        uint64
	SizeLBA         uint64
	PartitionGUID   uuid.UUID // the partition's unique GUID (PARTUUID), not its type
}

// Hard Drive node fields: partition format and signature type.
const (
	gptFormat     = 0x02
	guidSignature = 0x02
)

// HardDriveNode returns the Hard Drive node of a GPT partition:
//
//	offset  size  field
//	0       4     header: 0x04, 0x01, length 42
//	4       4     PartitionNumber
//	8       8     PartitionStart, in logical blocks
//	16      8     PartitionSize, in logical blocks
//	24      16    PartitionSignature: the partition's GUID as an EFI_GUID
//	40      1     MBRType: 0x02, GPT
//	41      1     SignatureType: 0x02, GUID
//
// all little-endian.
func HardDriveNode(partNumber uint32, startLBA, sizeLBA uint64, partGUID uuid.UUID) []byte {
	b := []byte{MediaType, HardDriveSubType, hardDriveLen, 0}
	b = binary.LittleEndian.AppendUint32(b, partNumber)
	b = binary.LittleEndian.AppendUint64(b, startLBA)
	b = binary.LittleEndian.AppendUint64(b, sizeLBA)
	b = append(b, guidBytes(partGUID)...)
	return append(b, gptFormat, guidSignature)
}

// HardDrive returns the GPT partition n names; false when n is not a Hard
// Drive node with a GUID signature.
func (n DevicePathNode) HardDrive() (HardDrive, bool) {
	d := n.Data
	if n.Type != MediaType || n.SubType != HardDriveSubType || len(d) != hardDriveLen-4 ||
		d[36] != gptFormat || d[37] != guidSignature {
		return HardDrive{}, false
	}
	return HardDrive{
		PartitionNumber: binary.LittleEndian.Uint32(d),
		StartLBA:        binary.LittleEndian.Uint64(d[4:]),
		SizeLBA:         binary.LittleEndian.Uint64(d[12:]),
		PartitionGUID:   guidFromBytes(d[20:36]),
	}, true
}

// FilePathNode returns a File Path node: the path as UTF-16LE with a NUL
// terminator. Slashes become backslashes and a leading backslash is added
// when missing, so "EFI/BOOT/BOOTX64.EFI" gives \EFI\BOOT\BOOTX64.EFI.
func FilePathNode(path string) ([]byte, error) {
	p := strings.ReplaceAll(path, "/", `\`)
	if !strings.HasPrefix(p, `\`) {
		p = `\` + p
	}
	if p == `\` {
		return nil, fmt.Errorf("file path %q names no file", path)
	}
	s, err := EncodeString(p)
	if err != nil {
		return nil, fmt.Errorf("file path: %w", err)
	}
	return DevicePathNode{Type: MediaType, SubType: FilePathSubType, Data: s}.Marshal()
}

// FilePath returns the path of a File Path node, up to its NUL; false when
// n is not one.
func (n DevicePathNode) FilePath() (string, bool) {
	if n.Type != MediaType || n.SubType != FilePathSubType {
		return "", false
	}
	s, err := DecodeString(n.Data)
	if err != nil {
		return "", false
	}
	return s, true
}

// guidBytes returns g as an EFI_GUID is stored: the first three fields
// (32, 16 and 16 bits) little-endian, the last 8 bytes as written. A
// uuid.UUID holds all of them big-endian (RFC 4122), as the text reads, so
// the first three are swapped.
func guidBytes(g uuid.UUID) []byte {
	return []byte{
		g[3], g[2], g[1], g[0],
		g[5], g[4],
		g[7], g[6],
		g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15],
	}
}

// guidFromBytes is the inverse of guidBytes; b holds 16 bytes.
func guidFromBytes(b []byte) uuid.UUID {
	return uuid.UUID{
		b[3], b[2], b[1], b[0],
		b[5], b[4],
		b[7], b[6],
		b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
	}
}
