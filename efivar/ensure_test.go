package efivar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

var errCut = errors.New("power cut")

// recorder is a Store over a Dir that counts its writes and, when limit is
// not negative, fails every write after the first limit ones.
type recorder struct {
	d      Dir
	writes int
	limit  int
}

func (r *recorder) Get(name, vendor string) (uint32, []byte, error) { return r.d.Get(name, vendor) }

func (r *recorder) Set(name, vendor string, attrs uint32, data []byte) error {
	if err := r.write(); err != nil {
		return err
	}
	return r.d.Set(name, vendor, attrs, data)
}

func (r *recorder) Remove(name, vendor string) error {
	if err := r.write(); err != nil {
		return err
	}
	return r.d.Remove(name, vendor)
}

func (r *recorder) write() error {
	if r.limit >= 0 && r.writes >= r.limit {
		return errCut
	}
	r.writes++
	return nil
}

// listingRecorder is a recorder that is a Lister.
type listingRecorder struct{ *recorder }

func (l listingRecorder) List(vendor string) ([]string, error) { return l.d.List(vendor) }

// store returns a recorder on d, a Lister when list is set, and limit writes.
func store(d Dir, list bool, limit int) (Store, *recorder) {
	r := &recorder{d: d, limit: limit}
	if list {
		return listingRecorder{r}, r
	}
	return r, r
}

var (
	espGUID   = uuid.MustParse("6b1d4b3e-5c2a-4f0e-9d1e-2f3a4b5c6d7e")
	otherGUID = uuid.MustParse("0fc63daf-8483-4772-8e79-3d69d8477de4")
)

// stagehandOptions returns the two options stagehand puts first, on the
// ESP of GUID g.
func stagehandOptions(t testing.TB, g uuid.UUID) []LoadOption {
	hd := HardDriveNode(1, 2048, 1048576, g)
	return []LoadOption{
		{Attributes: LoadOptionActive, Description: "stagehand", FilePath: DevicePath(hd, mustFilePath(t, `\EFI\systemd\systemd-bootx64.efi`))},
		{Attributes: LoadOptionActive, Description: "stagehand fallback", FilePath: DevicePath(hd, mustFilePath(t, `\EFI\BOOT\BOOTX64.EFI`))},
	}
}

func marshal(t testing.TB, o LoadOption) []byte {
	t.Helper()
	b, err := o.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ovmfVars are the load options of a fresh OVMF: UiApp (hidden), a DVD, a
// disk's removable path and the shell, in BootOrder 0, 1, 2, 3.
func ovmfVars(t testing.TB) map[uint16][]byte {
	return map[uint16][]byte{0: unhex(t, ovmfUiApp), 1: unhex(t, ovmfDVD), 2: unhex(t, ovmfMBRFile), 3: unhex(t, ovmfShell)}
}

// setup writes vars and, unless nil, order.
func setup(t testing.TB, vars map[uint16][]byte, order []uint16) Dir {
	t.Helper()
	d := Dir(t.TempDir())
	for n, b := range vars {
		if err := d.Set(bootName(n), GlobalVendor, bootAttrs, b); err != nil {
			t.Fatal(err)
		}
	}
	if order != nil {
		if err := SetBootOrder(d, order); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// state returns the data of d's variables of GlobalVendor, by name.
func state(t testing.TB, d Dir) map[string][]byte {
	t.Helper()
	names, err := d.List(GlobalVendor)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string][]byte)
	for _, name := range names {
		a, data, err := d.Get(name, GlobalVendor)
		if err != nil || a != bootAttrs {
			t.Fatalf("%s: attributes %#x, %v", name, a, err)
		}
		m[name] = data
	}
	return m
}

func orderBytes(order []uint16) []byte {
	var b []byte
	for _, n := range order {
		b = binary.LittleEndian.AppendUint16(b, n)
	}
	return b
}

func TestEnsureFirst(t *testing.T) {
	opts := stagehandOptions(t, espGUID)
	sh, fb := marshal(t, opts[0]), marshal(t, opts[1])
	elsewhere := marshal(t, stagehandOptions(t, otherGUID)[0])
	inactive := opts[0]
	inactive.Attributes = 0
	bootctl := opts[0] // as `bootctl install` makes it
	bootctl.Description = "Linux Boot Manager"
	with := func(extra map[uint16][]byte) map[uint16][]byte {
		m := ovmfVars(t)
		for n, b := range extra {
			m[n] = b
		}
		return m
	}
	for _, tc := range []struct {
		name      string
		vars      map[uint16][]byte
		order     []uint16 // nil: unset
		wantAt    []uint16 // numbers of opts
		wantOrder []uint16
		writes    int
	}{
		{"ovmf", ovmfVars(t), []uint16{0, 1, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 0, 1, 2, 3}, 3},
		{"nothing", nil, nil, []uint16{0, 1}, []uint16{0, 1}, 3},
		{"in place", with(map[uint16][]byte{4: sh, 5: fb}), []uint16{4, 5, 0, 1, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 0, 1, 2, 3}, 0},
		{"reordered", with(map[uint16][]byte{4: sh, 5: fb}), []uint16{0, 5, 1, 4, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 0, 1, 2, 3}, 1},
		{"not in order", with(map[uint16][]byte{7: sh, 5: fb}), []uint16{0, 1, 2, 3}, []uint16{7, 5}, []uint16{7, 5, 0, 1, 2, 3}, 1},
		{"order names unset options", ovmfVars(t), []uint16{9, 0, 1, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 9, 0, 1, 2, 3}, 3},
		{"other partition", with(map[uint16][]byte{4: elsewhere}), []uint16{4, 0, 1, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 0, 1, 2, 3}, 3},
		{"inactive", with(map[uint16][]byte{4: marshal(t, inactive), 5: fb}), []uint16{4, 5, 0, 1, 2, 3}, []uint16{4, 5}, []uint16{4, 5, 0, 1, 2, 3}, 1},
		{"same path preferred", with(map[uint16][]byte{4: elsewhere, 6: sh}), []uint16{0, 1, 2, 3, 4}, []uint16{6, 5}, []uint16{6, 5, 0, 1, 2, 3, 4}, 2},
		{"BootOrder preferred", with(map[uint16][]byte{6: sh, 8: sh}), []uint16{0, 1, 2, 3, 8}, []uint16{8, 4}, []uint16{8, 4, 0, 1, 2, 3}, 2},
		{"gap", map[uint16][]byte{0: unhex(t, ovmfUiApp), 1: unhex(t, ovmfDVD), 3: unhex(t, ovmfShell)}, []uint16{0, 1, 3}, []uint16{2, 4}, []uint16{2, 4, 0, 1, 3}, 3},
		{"malformed option kept", with(map[uint16][]byte{4: {1, 2, 3}}), []uint16{0, 1, 2, 3, 4}, []uint16{5, 6}, []uint16{5, 6, 0, 1, 2, 3, 4}, 3},
		{"repeats in order kept", ovmfVars(t), []uint16{0, 0, 1}, []uint16{4, 5}, []uint16{4, 5, 0, 0, 1}, 3},
		{"bootctl's option kept", with(map[uint16][]byte{4: marshal(t, bootctl)}), []uint16{4, 0, 1, 2, 3}, []uint16{5, 6}, []uint16{5, 6, 4, 0, 1, 2, 3}, 3},
	} {
		for _, list := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/list=%v", tc.name, list), func(t *testing.T) {
				d := setup(t, tc.vars, tc.order)
				want := make(map[string][]byte)
				for n, b := range tc.vars {
					want[bootName(n)] = b
				}
				for i, n := range tc.wantAt {
					want[bootName(n)] = marshal(t, opts[i])
				}
				want["BootOrder"] = orderBytes(tc.wantOrder)

				s, r := store(d, list, -1)
				changed, err := EnsureFirst(s, opts)
				if err != nil {
					t.Fatal(err)
				}
				if changed != (tc.writes > 0) || r.writes != tc.writes {
					t.Errorf("changed %v after %d writes, want %d writes", changed, r.writes, tc.writes)
				}
				if d := cmp.Diff(want, state(t, d)); d != "" {
					t.Errorf("variables (-want, +got):\n%s", d)
				}

				r.writes = 0
				changed, err = EnsureFirst(s, opts)
				if err != nil || changed || r.writes != 0 {
					t.Errorf("again: changed %v after %d writes, %v; want nothing written", changed, r.writes, err)
				}
				if d := cmp.Diff(want, state(t, d)); d != "" {
					t.Errorf("variables after the second call (-want, +got):\n%s", d)
				}
			})
		}
	}
}

// TestEnsureFirstProbe: a Store that is not a Lister is probed up to
// Boot00FF; beyond, a number is free only when its variable is unset.
func TestEnsureFirstProbe(t *testing.T) {
	opts := stagehandOptions(t, espGUID)
	vars := make(map[uint16][]byte)
	for n := range uint16(0x101) {
		vars[n] = marshal(t, LoadOption{Attributes: 1, Description: fmt.Sprint(n), FilePath: EndNode()})
	}
	vars[0x200] = marshal(t, opts[0])
	for _, tc := range []struct {
		list   bool
		wantAt []uint16
	}{
		{true, []uint16{0x200, 0x101}},
		{false, []uint16{0x101, 0x102}}, // Boot0200 is not found, nor overwritten
	} {
		d := setup(t, vars, []uint16{0})
		s, _ := store(d, tc.list, -1)
		if _, err := EnsureFirst(s, opts); err != nil {
			t.Fatal(err)
		}
		got, _ := BootOrder(d)
		if d := cmp.Diff(append(tc.wantAt, 0), got); d != "" {
			t.Errorf("list=%v: BootOrder (-want, +got):\n%s", tc.list, d)
		}
		for i, n := range tc.wantAt {
			if o, err := BootOption(d, n); err != nil || o.Description != opts[i].Description {
				t.Errorf("list=%v: %s is %q, %v; want %q", tc.list, bootName(n), o.Description, err, opts[i].Description)
			}
		}
		if o, err := BootOption(d, 0x200); err != nil || o.Description != "stagehand" {
			t.Errorf("list=%v: Boot0200 is %q, %v", tc.list, o.Description, err)
		}
	}
}

// TestEnsureFirstCut cuts the power before each write: BootOrder stays as
// it was until the last write, and a new call ends as an uncut one would.
func TestEnsureFirstCut(t *testing.T) {
	opts := stagehandOptions(t, espGUID)
	vars := ovmfVars(t)
	vars[4] = marshal(t, stagehandOptions(t, otherGUID)[0]) // rewritten, then one created
	order := []uint16{0, 4, 1, 2, 3}
	for _, list := range []bool{true, false} {
		d := setup(t, vars, order)
		s, r := store(d, list, -1)
		if _, err := EnsureFirst(s, opts); err != nil {
			t.Fatal(err)
		}
		want, writes := state(t, d), r.writes
		for k := range writes {
			d := setup(t, vars, order)
			s, _ := store(d, list, k)
			changed, err := EnsureFirst(s, opts)
			if !errors.Is(err, errCut) || changed != (k > 0) {
				t.Fatalf("list=%v, cut after %d writes: changed %v, %v", list, k, changed, err)
			}
			if got, _ := BootOrder(d); !cmp.Equal(got, order) {
				t.Errorf("list=%v, cut after %d writes: BootOrder %v, want %v", list, k, got, order)
			}
			s, _ = store(d, list, -1)
			if _, err := EnsureFirst(s, opts); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(want, state(t, d)); d != "" {
				t.Errorf("list=%v, cut after %d writes, then again: variables (-uncut, +got):\n%s", list, k, d)
			}
		}
	}
}

func TestEnsureFirstErrors(t *testing.T) {
	opts := stagehandOptions(t, espGUID)
	twice := []LoadOption{opts[0], opts[0]}
	noPath := []LoadOption{{Description: "x"}}
	badPath := []LoadOption{{Description: "x", FilePath: []byte{4, 4, 3, 0}}}
	endOnly := []LoadOption{{Description: "x", FilePath: EndNode()}}
	nul := []LoadOption{{Description: "x\x00", FilePath: DevicePath(mustFilePath(t, "a"))}}
	unreadable := setup(t, nil, []uint16{1})
	os.Mkdir(filepath.Join(string(unreadable), "Boot0001-"+GlobalVendor), 0o755)
	for _, tc := range []struct {
		name string
		d    Dir
		opts []LoadOption
		err  string
	}{
		{"same description twice", setup(t, nil, nil), twice, `two load options are described "stagehand"`},
		{"no path", setup(t, nil, nil), noPath, `load option "x": device path: no end node`},
		{"bad path", setup(t, nil, nil), badPath, "length 3"},
		{"only an end node", setup(t, nil, nil), endOnly, `load option "x": empty device path`},
		{"NUL in description", setup(t, nil, nil), nul, "holds a NUL"},
		{"bad BootOrder", setup(t, map[uint16][]byte{}, nil), opts, "BootOrder holds 1 bytes"},
		{"unreadable option", unreadable, opts, "reading Boot0001"},
	} {
		if tc.name == "bad BootOrder" {
			tc.d.Set("BootOrder", GlobalVendor, bootAttrs, []byte{1})
		}
		for _, list := range []bool{true, false} {
			s, r := store(tc.d, list, -1)
			changed, err := EnsureFirst(s, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.err) || changed || r.writes != 0 {
				t.Errorf("%s, list=%v: changed %v after %d writes, %v; want error %q", tc.name, list, changed, r.writes, err, tc.err)
			}
		}
	}
}
