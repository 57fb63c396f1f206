package initramfs

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// moduleName is a module's name from its path: kernel/fs/fat/vfat.ko → vfat
// (dashes and underscores are one to the kernel).
func moduleName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(b, ext); ok {
			b = n
			break
		}
	}
	return strings.ReplaceAll(b, "-", "_")
}

// Order returns the paths of the named modules and of all they need,
// dependencies first, each once.
func (m ModulesDep) Order(names ...string) ([]string, error) {
	byName := map[string]string{}
	for p := range m {
		byName[moduleName(p)] = p
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

// LoadModules loads the named modules of dir (/lib/modules/RELEASE) and
// what they need, dependencies first, with finit_module. A module already
// loaded or built in is fine. It returns the modules it loaded; modules it
// cannot find or load are reported in the error, after the others loaded.
func LoadModules(dir string, names ...string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	dep, err := ParseModulesDep(b)
	if err != nil {
		return nil, err
	}
	order, orderErr := dep.Order(names...)
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
			loaded = append(loaded, moduleName(p))
		case unix.EEXIST:
		default:
			errs = append(errs, fmt.Errorf("loading %s: %w", moduleName(p), os.NewSyscallError("finit_module", err)))
		}
	}
	return loaded, errors.Join(errs...)
}
