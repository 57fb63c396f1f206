package efivar

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

// TestGUIDByteOrder checks guidBytes against GUIDs written by real
// firmware: OVMF's Boot0000 (ovmfUiApp) names UiApp's file by its GUID,
// 462CAA21-7614-4503-836E-8AB6F4662331 in edk2's UiApp.inf, and its
// firmware volume, 7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1 in OvmfPkgX64.fdf.
func TestGUIDByteOrder(t *testing.T) {
	o, err := ParseLoadOption(unhex(t, ovmfUiApp))
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := ParseDevicePath(o.FilePath)
	if err != nil {
		t.Fatal(err)
	}
	var got []uuid.UUID
	for _, n := range nodes {
		got = append(got, guidFromBytes(n.Data))
		if !bytes.Equal(guidBytes(guidFromBytes(n.Data)), n.Data) {
			t.Errorf("guidBytes(guidFromBytes(% x)) differs", n.Data)
		}
	}
	want := []uuid.UUID{
		uuid.MustParse("7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1"),
		uuid.MustParse("462CAA21-7614-4503-836E-8AB6F4662331"),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("GUIDs of UiApp's path (-want, +got):\n%s", d)
	}
	// EFI_GUID {u32, u16, u16, u8[8]}, the integers little-endian.
	g := uuid.MustParse("01234567-89ab-cdef-0123-456789abcdef")
	if b, want := guidBytes(g), []byte{0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}; !bytes.Equal(b, want) {
		t.Errorf("guidBytes(%s) = % x, want % x", g, b, want)
	}
}

func TestHardDriveNode(t *testing.T) {
	g := uuid.MustParse("01234567-89ab-cdef-0123-456789abcdef")
	b := HardDriveNode(1, 2048, 524288, g)
	want := []byte{
		0x04, 0x01, 0x2a, 0x00, // Media, Hard Drive, 42 bytes
		0x01, 0x00, 0x00, 0x00, // partition 1
		0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // start 0x800
		0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, // size 0x80000
		0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
		0x02, 0x02, // GPT, GUID signature
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("HardDriveNode = % x\nwant            % x", b, want)
	}
	nodes, err := ParseDevicePath(DevicePath(b))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("ParseDevicePath = %v, %v", nodes, err)
	}
	hd, ok := nodes[0].HardDrive()
	if d := cmp.Diff(HardDrive{1, 2048, 524288, g}, hd); !ok || d != "" {
		t.Errorf("HardDrive() ok %v (-want, +got):\n%s", ok, d)
	}
	// OVMF's Boot0007 has an MBR partition: no GUID.
	o, _ := ParseLoadOption(unhex(t, ovmfMBRFile))
	nodes, _ = ParseDevicePath(o.FilePath)
	if _, ok := nodes[0].HardDrive(); ok {
		t.Error("HardDrive() of an MBR partition's node is ok")
	}
	if p, ok := nodes[1].FilePath(); !ok || p != `\edge_boot` {
		t.Errorf("FilePath() = %q, %v; want \\edge_boot", p, ok)
	}
}

func TestFilePathNode(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      string
	}{
		{`\EFI\BOOT\BOOTX64.EFI`, `\EFI\BOOT\BOOTX64.EFI`, ""},
		{"EFI/systemd/systemd-bootx64.efi", `\EFI\systemd\systemd-bootx64.efi`, ""},
		{"/EFI/BOOT/BOOTX64.EFI", `\EFI\BOOT\BOOTX64.EFI`, ""},
		{"", "", "names no file"},
		{"/", "", "names no file"},
		{"a\x00b", "", "holds a NUL"},
	} {
		b, err := FilePathNode(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("FilePathNode(%q) = % x, %v; want error %q", tc.in, b, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("FilePathNode(%q): %v", tc.in, err)
			continue
		}
		enc, _ := EncodeString(tc.want)
		if want := append([]byte{4, 4, byte(4 + len(enc)), 0}, enc...); !bytes.Equal(b, want) {
			t.Errorf("FilePathNode(%q) = % x, want % x", tc.in, b, want)
		}
		nodes, err := ParseDevicePath(DevicePath(b))
		if err != nil || len(nodes) != 1 {
			t.Fatalf("ParseDevicePath = %v, %v", nodes, err)
		}
		if p, ok := nodes[0].FilePath(); !ok || p != tc.want {
			t.Errorf("FilePath() = %q, %v; want %q", p, ok, tc.want)
		}
	}
	if _, err := FilePathNode(strings.Repeat("a", 0x8000)); err == nil {
		t.Error("FilePathNode of 32768 characters succeeded")
	}
}

func TestParseDevicePath(t *testing.T) {
	hd := HardDriveNode(2, 1, 2, uuid.UUID{1})
	file := []byte{4, 4, 8, 0, 'a', 0, 0, 0}
	for _, tc := range []struct {
		name string
		in   []byte
		want []DevicePathNode
		err  string
	}{
		{"hd file", DevicePath(hd, file), []DevicePathNode{
			{Type: 4, SubType: 1, Data: hd[4:]},
			{Type: 4, SubType: 4, Data: file[4:]},
		}, ""},
		{"end only", EndNode(), nil, ""},
		{"bytes after end", append(DevicePath(file), 1, 2, 3), []DevicePathNode{{4, 4, file[4:]}}, ""},
		{"instances", DevicePath(file, []byte{0x7f, 0x01, 4, 0}, file), []DevicePathNode{
			{4, 4, file[4:]}, {0x7f, 0x01, nil}, {4, 4, file[4:]},
		}, ""},
		{"empty", nil, nil, "no end node"},
		{"no end", file, nil, "no end node"},
		{"short header", append(slices.Clone(file), 0x7f, 0xff, 4), nil, "no end node"},
		{"length 3", []byte{4, 4, 3, 0, 0x7f, 0xff, 4, 0}, nil, "length 3"},
		{"length 0", []byte{4, 4, 0, 0, 0x7f, 0xff, 4, 0}, nil, "length 0"},
		{"past the end", []byte{4, 4, 9, 0, 'a', 0, 0, 0, 0x7f, 0xff, 4, 0}[:8], nil, "length 9"},
		{"end past the end", []byte{0x7f, 0xff, 5, 0}, nil, "length 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDevicePath(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseDevicePath = %v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("nodes (-want, +got):\n%s", d)
			}
		})
	}
}

func TestDevicePath(t *testing.T) {
	file := []byte{4, 4, 8, 0, 'a', 0, 0, 0}
	want := append(slices.Clone(file), 0x7f, 0xff, 4, 0)
	for _, nodes := range [][][]byte{{file}, {file, EndNode()}} {
		if got := DevicePath(nodes...); !bytes.Equal(got, want) {
			t.Errorf("DevicePath(% x) = % x, want % x", nodes, got, want)
		}
	}
	if got := DevicePath(); !bytes.Equal(got, EndNode()) {
		t.Errorf("DevicePath() = % x, want the end node", got)
	}
	if _, err := (DevicePathNode{Data: make([]byte, 0xfffc)}).Marshal(); err == nil {
		t.Error("Marshal of a node of 65536 bytes succeeded")
	}
}

// FuzzParseDevicePath: what parses is written back by Marshal and
// DevicePath as it was (the end node aside, whose length may differ) and
// parses again to the same nodes.
func FuzzParseDevicePath(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		nodes, err := ParseDevicePath(b)
		if err != nil {
			return
		}
		var enc [][]byte
		for _, n := range nodes {
			e, err := n.Marshal()
			if err != nil {
				t.Fatalf("Marshal of parsed node %v: %v", n, err)
			}
			enc = append(enc, e)
			n.HardDrive()
			n.FilePath()
		}
		b2 := DevicePath(enc...)
		if !bytes.HasPrefix(b, b2[:len(b2)-4]) {
			t.Fatalf("written back as % x, not a prefix of % x", b2, b)
		}
		nodes2, err := ParseDevicePath(b2)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(nodes, nodes2); d != "" {
			t.Errorf("nodes (-parsed, +reparsed):\n%s", d)
		}
	})
}
