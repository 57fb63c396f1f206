package efivar

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/u-root/u-root/pkg/efivarfs"
	"golang.org/x/sys/unix"
)

const attrs = NonVolatile | BootServiceAccess | RuntimeAccess

func TestDir(t *testing.T) {
	type op struct {
		do    string // get, set, remove, file (write the raw file)
		name  string
		data  []byte
		attrs uint32
		want  []byte // get: data wanted; nil with err "" means fs.ErrNotExist
		err   string // "notexist" for fs.ErrNotExist
	}
	const v = LoaderVendor
	for _, tc := range []struct {
		name string
		ops  []op
	}{
		{"unset", []op{{do: "get", name: "X", err: "notexist"}}},
		{"set get", []op{
			{do: "set", name: "X", attrs: attrs, data: []byte("abc")},
			{do: "get", name: "X", attrs: attrs, want: []byte("abc")},
		}},
		{"set replaces", []op{
			{do: "set", name: "X", attrs: attrs, data: []byte("abc")},
			{do: "set", name: "X", attrs: NonVolatile, data: []byte("de")},
			{do: "get", name: "X", attrs: NonVolatile, want: []byte("de")},
		}},
		{"set empty removes", []op{
			{do: "set", name: "X", attrs: attrs, data: []byte("abc")},
			{do: "set", name: "X", attrs: attrs},
			{do: "get", name: "X", err: "notexist"},
		}},
		{"remove", []op{
			{do: "remove", name: "X"},
			{do: "set", name: "X", attrs: attrs, data: []byte("abc")},
			{do: "remove", name: "X"},
			{do: "get", name: "X", err: "notexist"},
			{do: "remove", name: "X"},
		}},
		{"efivarfs format", []op{
			{do: "file", name: "X", data: []byte{7, 0, 0, 0, 'h', 0, 'i', 0, 0, 0}},
			{do: "get", name: "X", attrs: 7, want: []byte{'h', 0, 'i', 0, 0, 0}},
		}},
		{"attributes only", []op{
			{do: "file", name: "X", data: []byte{7, 0, 0, 0}},
			{do: "get", name: "X", attrs: 7, want: []byte{}},
		}},
		{"empty file is unset", []op{
			{do: "file", name: "X", data: []byte{}},
			{do: "get", name: "X", err: "notexist"},
		}},
		{"short file", []op{
			{do: "file", name: "X", data: []byte{7, 0}},
			{do: "get", name: "X", err: "less than its 4 bytes"},
		}},
		{"bad names", []op{
			{do: "get", name: "", err: "is empty"},
			{do: "set", name: "a/b", data: []byte("x"), err: "holds '/'"},
			{do: "remove", name: "a\x00b", err: "holds '/' or NUL"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Dir(t.TempDir())
			for i, o := range tc.ops {
				var err error
				switch o.do {
				case "get":
					var a uint32
					var data []byte
					a, data, err = d.Get(o.name, v)
					if err == nil {
						if a != o.attrs || !bytes.Equal(data, o.want) {
							t.Errorf("op %d: Get(%s) = %#x, %q; want %#x, %q", i, o.name, a, data, o.attrs, o.want)
						}
					}
				case "set":
					err = d.Set(o.name, v, o.attrs, o.data)
				case "remove":
					err = d.Remove(o.name, v)
				case "file":
					err = os.WriteFile(filepath.Join(string(d), o.name+"-"+v), o.data, 0o644)
				}
				switch {
				case o.err == "" && err != nil:
					t.Fatalf("op %d (%s %s): %v", i, o.do, o.name, err)
				case o.err == "notexist" && !errors.Is(err, fs.ErrNotExist):
					t.Fatalf("op %d (%s %s): %v, want fs.ErrNotExist", i, o.do, o.name, err)
				case o.err != "" && o.err != "notexist" && (err == nil || !strings.Contains(err.Error(), o.err)):
					t.Fatalf("op %d (%s %s): %v, want %q", i, o.do, o.name, err, o.err)
				}
			}
		})
	}
}

// TestDirFiles: the files are those efivarfs shows (NAME-guid, the GUID in
// lower case), and no temporary file is left.
func TestDirFiles(t *testing.T) {
	d := Dir(t.TempDir())
	if err := d.Set("LoaderEntryOneShot", strings.ToUpper(LoaderVendor), attrs, []byte{'b', 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(string(d))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if d := cmp.Diff([]string{"LoaderEntryOneShot-" + LoaderVendor}, names); d != "" {
		t.Errorf("files (-want, +got):\n%s", d)
	}
	b, _ := os.ReadFile(filepath.Join(string(d), names[0]))
	if want := []byte{7, 0, 0, 0, 'b', 0, 0, 0}; !bytes.Equal(b, want) {
		t.Errorf("file holds % x, want % x", b, want)
	}
	for _, bad := range []string{"", "4a67b082", "{4a67b082-0a4c-41cf-b6c7-440b29bb8c4f}", "4a67b0820a4c41cfb6c7440b29bb8c4f", "4a67b082-0a4c-41cf-b6c7-440b29bb8c4g"} {
		if err := d.Set("X", bad, attrs, []byte("x")); err == nil || !strings.Contains(err.Error(), "not a GUID") {
			t.Errorf("Set with vendor %q: %v", bad, err)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    string
		enc  []byte
	}{
		{"ascii", "stagehand-b", []byte("s\x00t\x00a\x00g\x00e\x00h\x00a\x00n\x00d\x00-\x00b\x00\x00\x00")},
		{"empty", "", []byte{0, 0}},
		{"latin", "é", []byte{0xe9, 0, 0, 0}},
		{"surrogates", "😀", []byte{0x3d, 0xd8, 0x00, 0xde, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Dir(t.TempDir())
			if err := SetString(d, "S", LoaderVendor, attrs, tc.s); err != nil {
				t.Fatal(err)
			}
			a, data, err := d.Get("S", LoaderVendor)
			if err != nil || a != attrs || !bytes.Equal(data, tc.enc) {
				t.Errorf("stored %#x % x, %v; want %#x % x", a, data, err, attrs, tc.enc)
			}
			if got, err := GetString(d, "S", LoaderVendor); err != nil || got != tc.s {
				t.Errorf("GetString = %q, %v; want %q", got, err, tc.s)
			}
		})
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
		err  bool
	}{
		{"no terminator", []byte{'a', 0, 'b', 0}, "ab", false},
		{"junk after NUL", []byte{'a', 0, 0, 0, 'x', 0}, "a", false},
		{"nothing", nil, "", false},
		{"odd", []byte{'a', 0, 'b'}, "", true},
		{"lone surrogate", []byte{0x3d, 0xd8, 0, 0}, "\uFFFD", false},
	} {
		got, err := DecodeString(tc.data)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("DecodeString(%s) = %q, %v; want %q, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if err := SetString(Dir(t.TempDir()), "S", LoaderVendor, attrs, "a\x00b"); err == nil {
		t.Error("SetString with a NUL succeeded")
	}
	if _, err := GetString(Dir(t.TempDir()), "S", LoaderVendor); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("GetString of an unset variable: %v", err)
	}
}

// TestNewFSPlainDir: u-root's efivarfs checks the file system's magic
// number, so FS cannot run on a plain directory; NewFS says so.
func TestNewFSPlainDir(t *testing.T) {
	dir := t.TempDir()
	_, err := NewFS(dir)
	if !errors.Is(err, efivarfs.ErrNoFS) || !strings.Contains(err.Error(), "mount -t efivarfs") {
		t.Fatalf("NewFS(%s) = %v, want efivarfs.ErrNoFS", dir, err)
	}
}

// TestRemoveImmutable runs FS.Remove's file handling on an immutable file
// of the host's file system, as efivarfs makes systemd-boot's variables:
// a plain unlink fails with EPERM, removeImmutable clears the flag first.
func TestRemoveImmutable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "LoaderEntryOneShot-"+LoaderVendor)
	if err := os.WriteFile(p, []byte{7, 0, 0, 0, 'b', 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags|fsImmutableFL)
	}
	f.Close()
	if err != nil {
		t.Fatalf("chattr +i %s: %v (needs root and a file system with inode flags, as ext4 and tmpfs)", p, err)
	}
	t.Cleanup(func() { // never leave an immutable file behind
		if f, err := os.Open(p); err == nil {
			clearImmutable(int(f.Fd()))
			f.Close()
		}
	})
	if err := os.Remove(p); !errors.Is(err, unix.EPERM) {
		t.Fatalf("unlink of an immutable file: %v, want EPERM", err)
	}
	if _, err := os.OpenFile(p, os.O_WRONLY, 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("opening an immutable file for writing (what u-root's RemoveVariable does): %v, want EPERM", err)
	}
	if err := removeImmutable(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("file still there: %v", err)
	}
	if err := removeImmutable(p); err != nil {
		t.Errorf("removing it again: %v", err)
	}
}

func TestSecureBoot(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte // nil: unset
		want bool
		err  bool
	}{
		{"unset", nil, false, false},
		{"enforced", []byte{1}, true, false},
		{"off", []byte{0}, false, false},
		{"malformed", []byte{1, 0}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Dir(t.TempDir())
			if tc.data != nil {
				if err := d.Set("SecureBoot", GlobalVendor, BootServiceAccess|RuntimeAccess, tc.data); err != nil {
					t.Fatal(err)
				}
			}
			got, err := SecureBoot(d)
			if got != tc.want || (err != nil) != tc.err {
				t.Errorf("SecureBoot = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}
