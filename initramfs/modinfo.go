package initramfs

import (
	"bytes"
	"fmt"
	"sort"
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
			mi.Name = ModuleName(string(v))
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
		d = ModuleName(d)
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

// ModuleName normalises a module or file name to the kernel's form:
// without .ko and with underscores for dashes.
func ModuleName(s string) string {
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
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

// ModulesDep is a parsed modules.dep: for each module path (relative to
// lib/modules/RELEASE), the paths of all the modules it needs, the one to
// load first last (depmod's order).
type ModulesDep map[string][]string

// Marshal writes modules.dep, sorted by module path.
func (m ModulesDep) Marshal() []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(k + ":")
		for _, d := range m[k] {
			b.WriteString(" " + d)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ParseModulesDep reads a modules.dep.
func ParseModulesDep(b []byte) (ModulesDep, error) {
	m := ModulesDep{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" || strings.ContainsAny(mod, " \t") {
			return nil, fmt.Errorf("modules.dep line %d: %q is not \"module: deps\"", i+1, line)
		}
		if _, dup := m[mod]; dup {
			return nil, fmt.Errorf("modules.dep line %d: %s listed twice", i+1, mod)
		}
		m[mod] = strings.Fields(deps)
	}
	return m, nil
}

// LoadOrder returns the module paths to load, dependencies first, so that
// every module in m is loaded once.
func (m ModulesDep) LoadOrder() ([]string, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var order []string
	done := map[string]bool{}
	for _, k := range keys {
		deps := m[k]
		for i := len(deps) - 1; i >= 0; i-- {
			d := deps[i]
			if _, ok := m[d]; !ok {
				return nil, fmt.Errorf("modules.dep: %s needs %s, which has no line of its own", k, d)
			}
			if !done[d] {
				done[d] = true
				order = append(order, d)
			}
		}
		if !done[k] {
			done[k] = true
			order = append(order, k)
		}
	}
	return order, nil
}
