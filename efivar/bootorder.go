package efivar

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
)

// bootAttrs are the attributes of BootOrder and Boot####, as the
// specification requires (3.3).
const bootAttrs = NonVolatile | BootServiceAccess | RuntimeAccess

// probeLimit bounds the Boot#### numbers EnsureFirst probes one by one on a
// Store that is not a Lister: Boot0000 to Boot00FF.
const probeLimit = 0x100

// bootName is the name of load option n: Boot and 4 upper-case hex digits,
// as the specification spells them (the firmware matches names exactly).
func bootName(n uint16) string { return fmt.Sprintf("Boot%04X", n) }

// parseBootName returns the number of a Boot#### name; false for any other
// name, including lower-case hex.
func parseBootName(name string) (uint16, bool) {
	if len(name) != 8 || name[:4] != "Boot" {
		return 0, false
	}
	for _, c := range name[4:] {
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(name[4:], 16, 16)
	return uint16(n), err == nil
}

// BootOrder returns BootOrder, the load options the boot manager tries in
// turn; empty when it is unset.
func BootOrder(s Store) ([]uint16, error) {
	_, data, err := s.Get("BootOrder", GlobalVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading BootOrder: %w", err)
	}
	if len(data)%2 != 0 {
		return nil, fmt.Errorf("BootOrder holds %d bytes, not a list of 16-bit numbers", len(data))
	}
	order := make([]uint16, len(data)/2)
	for i := range order {
		order[i] = binary.LittleEndian.Uint16(data[2*i:])
	}
	return order, nil
}

// SetBootOrder writes BootOrder; an empty order removes it.
func SetBootOrder(s Store, order []uint16) error {
	b := make([]byte, 0, 2*len(order))
	for _, n := range order {
		b = binary.LittleEndian.AppendUint16(b, n)
	}
	if err := s.Set("BootOrder", GlobalVendor, bootAttrs, b); err != nil {
		return fmt.Errorf("writing BootOrder: %w", err)
	}
	return nil
}

// BootOption reads load option n (Boot####); an error wrapping
// fs.ErrNotExist when it is unset.
func BootOption(s Store, n uint16) (LoadOption, error) {
	_, data, err := s.Get(bootName(n), GlobalVendor)
	if err != nil {
		return LoadOption{}, fmt.Errorf("reading %s: %w", bootName(n), err)
	}
	o, err := ParseLoadOption(data)
	if err != nil {
		return LoadOption{}, fmt.Errorf("%s: %w", bootName(n), err)
	}
	return o, nil
}

// SetBootOption writes load option n (Boot####).
func SetBootOption(s Store, n uint16, o LoadOption) error {
	b, err := o.Marshal()
	if err != nil {
		return fmt.Errorf("%s: %w", bootName(n), err)
	}
	if err := s.Set(bootName(n), GlobalVendor, bootAttrs, b); err != nil {
		return fmt.Errorf("writing %s: %w", bootName(n), err)
	}
	return nil
}
