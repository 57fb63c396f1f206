package initramfs

import (
	"bytes"
	"fmt"
	"github.com/stagehand-dev/stagehand/initramfs/kmod"
	"strings"
)

// Modinfo is what a kernel module's .modinfo section says about its name
// and its dependencies. The section is a run of NUL-terminated "key=value"
// strings; Debian ships no modules.dep, so this is where dependencies come
// from.
type Modinfo struct {
	Name    string
	Depends []string // module names, in the order the module lists them
}

// ParseModinfo reads a .modinfo section. Keys other than name and depends
// are ignored; dependency names are normalised (dashes to underscores, as
// the kernel does).
func ParseModinfo(b []byte) (Modinfo, error) {
	var mi Modinfo
	seenName, seenDeps := false, false
	for _, kv := range bytes.Split(b, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			continue // padding between strings, or a key without a value
		}
		switch string(k) {
		case "name":
			if seenName {
				return Modinfo{}, fmt.Errorf("modinfo: two name= entries (%q, %q)", mi.Name, v)
			}
			seenName = true
			if err := checkModName(string(v)); err != nil {
				return Modinfo{}, fmt.Errorf("modinfo: name: %w", err)
			}
			mi.Name = kmod.Name(string(v))
		case "depends":
			if seenDeps {
				return Modinfo{}, fmt.Errorf("modinfo: two depends= entries")
			}
			seenDeps = true
			deps, err := ParseDepends(string(v))
			if err != nil {
				return Modinfo{}, err
			}
			mi.Depends = deps
		}
	}
	return mi, nil
}

// ParseDepends parses the value of a depends= entry: module names separated
// by commas, possibly empty. Names are normalised; repeats are dropped.
func ParseDepends(v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var deps []string
	seen := map[string]bool{}
	for _, d := range strings.Split(v, ",") {
		if err := checkModName(d); err != nil {
			return nil, fmt.Errorf("modinfo: depends=%q: %w", v, err)
		}
		d = kmod.Name(d)
		if !seen[d] {
			seen[d] = true
			deps = append(deps, d)
		}
	}
	return deps, nil
}

// Marshal encodes mi as a .modinfo section: name= then depends=.
func (mi Modinfo) Marshal() []byte {
	var b bytes.Buffer
	if mi.Name != "" {
		fmt.Fprintf(&b, "name=%s\x00", mi.Name)
	}
	fmt.Fprintf(&b, "depends=%s\x00", strings.Join(mi.Depends, ","))
	return b.Bytes()
}

func checkModName(s string) error {
	if s == "" {
		return fmt.Errorf("empty module name")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("module name %q has character %q", s, r)
		}
	}
	return nil
}
