// Package kmod loads kernel modules the way modprobe would, from a
// lib/modules/RELEASE tree with a modules.dep: dependencies first, each
// once. It is what the pre-stage init needs of modules, kept apart from
// package initramfs so that PID 1 does not link the archive writer.
package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Where the initramfs builder puts the pre-stage init's modules: apart from
// lib/modules, so that an archive appended to the OS's initramfs never
// shadows the OS's own modules.dep.
const (
	PrestageDir  = "stagehand/modules" // + /RELEASE/{modules.dep,kernel/...}
	PrestageList = "etc/stagehand/modules"
)

// Name normalises a module or file name to the kernel's form: without
// .ko (compressed or not) and with underscores for dashes, which are one
// to the kernel.
func Name(s string) string {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(s, ext); ok {
			s = n
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

// Dep is a parsed modules.dep: for each module path (relative to
// lib/modules/RELEASE), the paths of all the modules it needs, the one to
// load first last (depmod's order).
type Dep map[string][]string

// Marshal writes modules.dep, sorted by module path.
func (m Dep) Marshal() []byte {
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

// ParseDep reads a modules.dep.
func ParseDep(b []byte) (Dep, error) {
	m := Dep{}
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
func (m Dep) LoadOrder() ([]string, error) {
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

// pathName is a module's name from its path: kernel/fs/fat/vfat.ko → vfat.
func pathName(p string) string { return Name(path.Base(p)) }

// Order returns the paths of the named modules and of all they need,
// dependencies first, each once.
func (m Dep) Order(names ...string) ([]string, error) {
	byName := map[string]string{}
	for p := range m {
		byName[pathName(p)] = p
	}
	var order, missing []string
	done := map[string]bool{}
	for _, n := range names {
		p, ok := byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			missing = append(missing, n)
			continue
		}
		deps := m[p]
		for i := len(deps) - 1; i >= 0; i-- {
			if !done[deps[i]] {
				done[deps[i]] = true
				order = append(order, deps[i])
			}
		}
		if !done[p] {
			done[p] = true
			order = append(order, p)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return order, fmt.Errorf("modules.dep has no %s", strings.Join(missing, ", "))
	}
	return order, nil
}

// Load loads the named modules of dir (/lib/modules/RELEASE) and what they
// need, dependencies first, with finit_module. A module already loaded or
// built in is fine, and so is one whose init says ENODEV: what it serves
// is not on this machine (efivarfs on a legacy BIOS), as modprobe's callers
// such as systemd-modules-load take it. It returns the modules it loaded;
// modules it cannot find or load are reported in the error, after the
// others loaded.
func Load(dir string, names ...string) ([]string, error) {
	dep, err := readDep(dir)
	if err != nil {
		return nil, err
	}
	order, err := dep.Order(names...)
	return load(dir, order, err)
}

// LoadAll loads every module of dir's modules.dep, as Load does.
func LoadAll(dir string) ([]string, error) {
	dep, err := readDep(dir)
	if err != nil {
		return nil, err
	}
	order, err := dep.LoadOrder()
	if err != nil {
		return nil, err
	}
	return load(dir, order, nil)
}

func readDep(dir string) (Dep, error) {
	b, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	return ParseDep(b)
}

// load loads the modules at the paths order, in order; orderErr is
// reported with the load errors.
func load(dir string, order []string, orderErr error) ([]string, error) {
	var loaded []string
	var errs []error
	if orderErr != nil {
		errs = append(errs, orderErr)
	}
	for _, p := range order {
		f, err := os.Open(filepath.Join(dir, p))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for {
			err = unix.FinitModule(int(f.Fd()), "", 0)
			if err != unix.EINTR {
				break
			}
		}
		f.Close()
		switch err {
		case nil:
			loaded = append(loaded, pathName(p))
		case unix.EEXIST, unix.ENODEV:
		default:
			errs = append(errs, fmt.Errorf("loading %s: %w", pathName(p), os.NewSyscallError("finit_module", err)))
		}
	}
	return loaded, errors.Join(errs...)
}
