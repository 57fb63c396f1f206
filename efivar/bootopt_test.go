package efivar

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

// Load options written by OVMF under QEMU, from u-root's
// pkg/uefivars/testdata/sys_fw_efivarfs.zip (v0.16.0): the data of
// Boot0000, Boot0003, Boot0005 and Boot0007, the efivarfs attributes cut.
const (
	// Boot0000 "UiApp": hidden, category app; Fv(7CB8BDC9-...)/FvFile(462CAA21-...).
	ovmfUiApp = "090100002c0055006900410070007000000004071400c9bdb87cebf8344faaea3ee4af6516a1" +
		"0406140021aa2c4614760345836e8ab6f46623317fff0400"
	// Boot0003 "UEFI QEMU DVD-ROM QM00003 ": PciRoot(0x0)/Pci(0x1,0x1)/Ata(...), with
	// OVMF's 16 bytes of optional data (a GUID marking options it made).
	ovmfDVD = "010000001e0055004500460049002000510045004d00550020004400560044002d0052004f004d0020" +
		"0051004d00300030003000300033002000000002010c00d041030a0000000001010600010103010800" +
		"010000007fff04004eac0881119f594d850ee21a522c59b2"
	// Boot0005 "EFI Internal Shell": Fv(7CB8BDC9-...)/FvFile(7C04A583-...).
	ovmfShell = "010000002c00450046004900200049006e007400650072006e0061006c0020005300680065006c006c" +
		"00000004071400c9bdb87cebf8344faaea3ee4af6516a10406140083a5047c3e9e1c4fad65e05268d0" +
		"b4d17fff0400"
	// Boot0007 "edge_boot": HD(1,MBR,0xBE1AFDFA,0x3F,0xFBFC1)/\edge_boot, optional
	// data "SHELL=shell".
	ovmfMBRFile = "01000000480065006400670065005f0062006f006f007400000004012a00010000003f000000000000" +
		"00c1bf0f0000000000fafd1abe000000000000000000000000010104041a005c0065006400670065005f" +
		"0062006f006f00740000007fff04005348454c4c3d7368656c6c"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLoadOptionGolden checks a whole load option against bytes laid out by
// hand from the UEFI specification (3.1.3, 10.3.5.1, 10.3.5.4, 10.3.1).
func TestLoadOptionGolden(t *testing.T) {
	file, err := FilePathNode(`\EFI\BOOT\BOOTX64.EFI`)
	if err != nil {
		t.Fatal(err)
	}
	o := LoadOption{
		Attributes:  LoadOptionActive,
		Description: "stagehand",
		FilePath:    DevicePath(HardDriveNode(1, 2048, 524288, uuid.MustParse("01234567-89ab-cdef-0123-456789abcdef")), file),
	}
	want := []byte{
		0x01, 0x00, 0x00, 0x00, // Attributes: LOAD_OPTION_ACTIVE
		0x5e, 0x00, // FilePathListLength: 42 + 48 + 4
		's', 0, 't', 0, 'a', 0, 'g', 0, 'e', 0, 'h', 0, 'a', 0, 'n', 0, 'd', 0, 0, 0, // Description
		// Hard Drive node
		0x04, 0x01, 0x2a, 0x00, // Media, Hard Drive, 42 bytes
		0x01, 0x00, 0x00, 0x00, // PartitionNumber 1
		0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // PartitionStart 2048
		0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, // PartitionSize 524288
		0x67, 0x45, 0x23, 0x01, // PartitionSignature: Data1 0x01234567, little-endian
		0xab, 0x89, // Data2 0x89ab
		0xef, 0xcd, // Data3 0xcdef
		0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, // Data4 as written
		0x02, // MBRType: GPT
		0x02, // SignatureType: GUID
		// File Path node
		0x04, 0x04, 0x30, 0x00, // Media, File Path, 48 bytes
		'\\', 0, 'E', 0, 'F', 0, 'I', 0, '\\', 0, 'B', 0, 'O', 0, 'O', 0, 'T', 0, '\\', 0,
		'B', 0, 'O', 0, 'O', 0, 'T', 0, 'X', 0, '6', 0, '4', 0, '.', 0, 'E', 0, 'F', 0, 'I', 0, 0, 0,
		// End of Entire Device Path
		0x7f, 0xff, 0x04, 0x00,
	}
	got, err := o.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Marshal =\n% x\nwant\n% x", got, want)
	}
	back, err := ParseLoadOption(want)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(o, back); d != "" {
		t.Errorf("ParseLoadOption (-want, +got):\n%s", d)
	}
}

func TestLoadOptionRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    LoadOption
	}{
		{"zero", LoadOption{}},
		{"description only", LoadOption{Description: "x"}},
		{"all", LoadOption{Attributes: 0x109, Description: "stagehand fallback", FilePath: DevicePath([]byte{4, 4, 6, 0, 0, 0}), OptionalData: []byte("SHELL=shell")}},
		{"optional data without path", LoadOption{Attributes: 1, Description: "é😀", OptionalData: []byte{0, 0}}},
		{"longest path", LoadOption{FilePath: make([]byte, 0xffff)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.o.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseLoadOption(b)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.o, got); d != "" {
				t.Errorf("round trip (-want, +got):\n%s", d)
			}
		})
	}
	for _, tc := range []struct {
		name string
		o    LoadOption
		err  string
	}{
		{"NUL in description", LoadOption{Description: "a\x00"}, "holds a NUL"},
		{"path too long", LoadOption{FilePath: make([]byte, 0x10000)}, "65536 bytes"},
	} {
		if b, err := tc.o.Marshal(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Marshal(%s) = % x, %v; want error %q", tc.name, b, err, tc.err)
		}
	}
}

// TestParseOVMF parses load options OVMF wrote and writes them back byte for
// byte.
func TestParseOVMF(t *testing.T) {
	for _, tc := range []struct {
		data     string
		attrs    uint32
		desc     string
		nodes    [][2]uint8 // type, subtype
		optional string
	}{
		{ovmfUiApp, 0x109, "UiApp", [][2]uint8{{4, 7}, {4, 6}}, ""},
		{ovmfDVD, 1, "UEFI QEMU DVD-ROM QM00003 ", [][2]uint8{{2, 1}, {1, 1}, {3, 1}}, "\x4e\xac\x08\x81\x11\x9f\x59\x4d\x85\x0e\xe2\x1a\x52\x2c\x59\xb2"},
		{ovmfShell, 1, "EFI Internal Shell", [][2]uint8{{4, 7}, {4, 6}}, ""},
		{ovmfMBRFile, 1, "edge_boot", [][2]uint8{{4, 1}, {4, 4}}, "SHELL=shell"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			b := unhex(t, tc.data)
			o, err := ParseLoadOption(b)
			if err != nil {
				t.Fatal(err)
			}
			if o.Attributes != tc.attrs || o.Description != tc.desc || string(o.OptionalData) != tc.optional {
				t.Errorf("parsed %#x %q optional %q; want %#x %q optional %q", o.Attributes, o.Description, o.OptionalData, tc.attrs, tc.desc, tc.optional)
			}
			nodes, err := ParseDevicePath(o.FilePath)
			if err != nil {
				t.Fatal(err)
			}
			var types [][2]uint8
			for _, n := range nodes {
				types = append(types, [2]uint8{n.Type, n.SubType})
			}
			if d := cmp.Diff(tc.nodes, types); d != "" {
				t.Errorf("node types (-want, +got):\n%s", d)
			}
			if back, err := o.Marshal(); err != nil || !bytes.Equal(back, b) {
				t.Errorf("Marshal = % x, %v; want % x", back, err, b)
			}
		})
	}
}

func TestParseLoadOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		err  string
	}{
		{"empty", nil, "shorter than its 6-byte header"},
		{"header only", []byte{1, 0, 0, 0, 0, 0}, "no NUL terminator"},
		{"no terminator", []byte{1, 0, 0, 0, 0, 0, 'a', 0, 'b', 0}, "no NUL terminator"},
		{"odd byte", []byte{1, 0, 0, 0, 0, 0, 'a', 0, 0}, "no NUL terminator"},
		{"path past the end", []byte{1, 0, 0, 0, 5, 0, 'a', 0, 0, 0, 0x7f, 0xff, 4, 0}, "5 bytes, only 4 left"},
		{"path past the end, long", []byte{1, 0, 0, 0, 0xff, 0xff, 0, 0}, "65535 bytes, only 0 left"},
	} {
		if o, err := ParseLoadOption(tc.in); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseLoadOption(%s) = %+v, %v; want error %q", tc.name, o, err, tc.err)
		}
	}
}

// FuzzParseLoadOption: a parsed option marshals, and parses back to the
// same option; bytes whose description is valid UTF-16 come back as they
// were.
func FuzzParseLoadOption(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseLoadOption(b)
		if err != nil {
			return
		}
		b2, err := o.Marshal()
		if err != nil {
			t.Fatalf("Marshal of parsed %+v: %v", o, err)
		}
		o2, err := ParseLoadOption(b2)
		if err != nil {
			t.Fatalf("ParseLoadOption(% x) of a marshalled option: %v", b2, err)
		}
		if d := cmp.Diff(o, o2); d != "" {
			t.Fatalf("option (-parsed, +reparsed):\n%s", d)
		}
		if desc, _ := EncodeString(o.Description); len(b) >= 6+len(desc) && bytes.Equal(desc, b[6:6+len(desc)]) && !bytes.Equal(b, b2) {
			t.Errorf("Marshal = % x, want % x", b2, b)
		}
	})
}
