package stage

import (
	"archive/tar"
	"fmt"
	"path"
	"strings"
)

// EntryError is a layer entry refused as hostile or malformed.
type EntryError struct {
	Name   string
	Reason string
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("layer entry %q: %s; refusing the image", e.Name, e.Reason)
}

// CleanEntry checks a tar entry of a layer and returns its path, relative to
// the image root and cleaned. Nothing is ever extracted or followed; the
// checks refuse what a careless extractor would turn into a write outside
// the tree: absolute names, ".." that climbs out, links whose target leaves
// the tree, and device nodes.
func CleanEntry(h *tar.Header) (string, error) {
	name, err := inTree(h.Name, "path")
	if err != nil {
		return "", &EntryError{h.Name, err.Error()}
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeFifo, tar.TypeGNUSparse:
	case tar.TypeSymlink:
		target := h.Linkname
		if !path.IsAbs(target) { // absolute targets resolve inside the image root
			target = path.Join(path.Dir(name), target)
			if target == ".." || strings.HasPrefix(target, "../") {
				return "", &EntryError{h.Name, fmt.Sprintf("symlink to %q leaves the image tree", h.Linkname)}
			}
		}
	case tar.TypeLink:
		if _, err := inTree(h.Linkname, "hard link target"); err != nil {
			return "", &EntryError{h.Name, err.Error()}
		}
	case tar.TypeChar, tar.TypeBlock:
		return "", &EntryError{h.Name, "is a device node"}
	default:
		return "", &EntryError{h.Name, fmt.Sprintf("has unsupported type %q", h.Typeflag)}
	}
	return name, nil
}

// inTree cleans a relative path and refuses absolute ones and ones that
// climb above the root.
func inTree(p, what string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty %s", what)
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%s contains a NUL byte", what)
	}
	if path.IsAbs(p) {
		return "", fmt.Errorf("%s %q is absolute", what, p)
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%s %q climbs out of the image tree", what, p)
	}
	return c, nil
}
