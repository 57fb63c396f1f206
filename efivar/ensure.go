package efivar

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
)

// EnsureFirst makes opts the first entries of BootOrder, in their order,
// followed by the rest of the previous order. When the first fails (the
// image returns an error), the boot manager starts the next (UEFI
// specification 3.1.1).
//
// Each option keeps the number of an existing Boot#### with the same
// description, one with the same file path too if there is one, preferring
// one in BootOrder, then the lowest number; that option is rewritten when
// its bytes differ (a path to another partition, an inactive option).
// Otherwise the option is created at the lowest free number. All Boot####
// are written before BootOrder, so that a failure between writes leaves the
// previous order, whose options still boot. Nothing is written when all is
// in place already: changed is false.
//
// Existing options are found through Lister when s is one; otherwise
// BootOrder and Boot0000 to Boot00FF are read, and an option outside both
// is not found (and not overwritten: a number is free only when its
// variable is unset).
func EnsureFirst(s Store, opts []LoadOption) (changed bool, err error) {
	want := make([][]byte, len(opts))
	for i, o := range opts {
		for _, p := range opts[:i] {
			if p.Description == o.Description {
				return false, fmt.Errorf("two load options are described %q", o.Description)
			}
		}
		nodes, err := ParseDevicePath(o.FilePath)
		if err != nil {
			return false, fmt.Errorf("load option %q: %w", o.Description, err)
		}
		if len(nodes) == 0 {
			return false, fmt.Errorf("load option %q: empty device path", o.Description)
		}
		if want[i], err = o.Marshal(); err != nil {
			return false, err
		}
	}
	order, err := BootOrder(s)
	if err != nil {
		return false, err
	}
	vars, err := readBootVars(s, order)
	if err != nil {
		return false, err
	}

	nums := make([]uint16, len(opts))
	var writes []int // indices into opts
	for i, o := range opts {
		v := find(vars, nums[:i], o)
		if v == nil {
			n, err := freeNumber(s, vars, nums[:i])
			if err != nil {
				return false, err
			}
			nums[i] = n
			writes = append(writes, i)
			continue
		}
		nums[i] = v.n
		if !bytes.Equal(v.data, want[i]) {
			writes = append(writes, i)
		}
	}

	for k, i := range writes {
		if err := s.Set(bootName(nums[i]), GlobalVendor, bootAttrs, want[i]); err != nil {
			return k > 0, fmt.Errorf("writing %s (%q): %w", bootName(nums[i]), opts[i].Description, err)
		}
	}
	newOrder := slices.Clone(nums)
	for _, n := range order {
		if !slices.Contains(nums, n) {
			newOrder = append(newOrder, n)
		}
	}
	if slices.Equal(newOrder, order) {
		return len(writes) > 0, nil
	}
	if err := SetBootOrder(s, newOrder); err != nil {
		return len(writes) > 0, err
	}
	return true, nil
}

// bootVar is a Boot#### variable that is set.
type bootVar struct {
	n    uint16
	data []byte
	opt  LoadOption
	ok   bool // data parsed as a load option
}

// readBootVars reads the Boot#### variables that are set, those of order
// first (in its order), then the others by number.
func readBootVars(s Store, order []uint16) ([]bootVar, error) {
	var others []uint16
	if l, ok := s.(Lister); ok {
		names, err := l.List(GlobalVendor)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			if n, ok := parseBootName(name); ok {
				others = append(others, n)
			}
		}
	} else {
		for n := range probeLimit {
			others = append(others, uint16(n))
		}
	}
	slices.Sort(others)

	var vars []bootVar
	seen := make(map[uint16]bool)
	for _, n := range slices.Concat(order, others) {
		if seen[n] {
			continue
		}
		seen[n] = true
		_, data, err := s.Get(bootName(n), GlobalVendor)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", bootName(n), err)
		}
		o, err := ParseLoadOption(data)
		vars = append(vars, bootVar{n: n, data: data, opt: o, ok: err == nil})
	}
	return vars, nil
}

// find returns the first of vars, not among used, with o's description and
// file path, or else with its description; nil when there is none.
func find(vars []bootVar, used []uint16, o LoadOption) *bootVar {
	var sameDesc *bootVar
	for i := range vars {
		v := &vars[i]
		if !v.ok || v.opt.Description != o.Description || slices.Contains(used, v.n) {
			continue
		}
		if bytes.Equal(v.opt.FilePath, o.FilePath) {
			return v
		}
		if sameDesc == nil {
			sameDesc = v
		}
	}
	return sameDesc
}

// freeNumber returns the lowest number that is not among vars or used and
// whose Boot#### is unset. Each candidate is read: a Store that is not a
// Lister has only been probed up to probeLimit.
func freeNumber(s Store, vars []bootVar, used []uint16) (uint16, error) {
	taken := make(map[uint16]bool, len(vars)+len(used))
	for _, v := range vars {
		taken[v.n] = true
	}
	for _, n := range used {
		taken[n] = true
	}
	for n := 0; n <= 0xffff; n++ {
		if taken[uint16(n)] {
			continue
		}
		_, _, err := s.Get(bootName(uint16(n)), GlobalVendor)
		if errors.Is(err, fs.ErrNotExist) {
			return uint16(n), nil
		}
		if err != nil {
			return 0, fmt.Errorf("reading %s: %w", bootName(uint16(n)), err)
		}
	}
	return 0, errors.New("no free Boot#### number: Boot0000 to BootFFFF are all set")
}
