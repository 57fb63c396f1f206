package efivar

import (
	"fmt"
	"os"
	"strings"
)

// Lister is a Store that can list its variables. EnsureFirst uses it to
// find every Boot####; a Store without it is probed by name.
type Lister interface {
	// List returns the names of the variables of vendor that are set, in
	// no particular order.
	List(vendor string) ([]string, error)
}

var (
	_ Lister = Dir("")
	_ Lister = (*FS)(nil)
)

// List implements Lister.
func (d Dir) List(vendor string) ([]string, error) { return listDir(string(d), vendor) }

// listDir returns the names of the variables of vendor in dir, laid out as
// efivarfs does (files NAME-vendor), leaving out empty files (unset
// variables) and hidden ones (Dir's temporary files).
func listDir(dir, vendor string) ([]string, error) {
	g, err := parseVendor(vendor)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing EFI variables: %w", err)
	}
	suffix := "-" + g.String()
	var names []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), suffix) // the GUID in lower case, as Get reads it
		if !ok || name == "" || strings.HasPrefix(name, ".") || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() == 0 {
			continue // removed since ReadDir, or unset
		}
		names = append(names, name)
	}
	return names, nil
}
