package initramfs

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"github.com/stagehand-dev/stagehand/initramfs/kmod"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Modules is a kernel's module tree on the host: a lib/modules/RELEASE
// directory as a Debian linux-image package unpacks it (without
// modules.dep: dependencies are read from each module's .modinfo).
type Modules struct {
	dir     string
	release string
	byName  map[string]string // module name -> path relative to dir
	builtin map[string]bool
}

// OpenModules indexes the module tree dir (…/lib/modules/RELEASE).
func OpenModules(dir string) (*Modules, error) {
	t := &Modules{dir: dir, release: filepath.Base(dir), byName: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() || !strings.Contains(name, ".ko") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		base, ext, _ := strings.Cut(name, ".ko")
		if ext != "" {
			// Compressed (.ko.xz, .ko.zst): would need decompressing before
			// finit_module; Debian's 6.1 kernels ship plain .ko.
			t.byName[kmod.Name(base)] = "!" + rel
			return nil
		}
		mn := kmod.Name(base)
		if old, ok := t.byName[mn]; ok {
			return fmt.Errorf("module %s is both %s and %s", mn, old, rel)
		}
		t.byName[mn] = rel
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing kernel modules in %s: %w", dir, err)
	}
	if len(t.byName) == 0 {
		return nil, fmt.Errorf("indexing kernel modules in %s: no modules found", dir)
	}
	if f, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			t.builtin[kmod.Name(path.Base(strings.TrimSpace(s.Text())))] = true
		}
		f.Close()
	}
	return t, nil
}

// Release is the kernel release the tree belongs to (its directory name).
func (t *Modules) Release() string { return t.release }

// Module is a resolved module.
type Module struct {
	Name    string
	Path    string   // relative to the tree, e.g. kernel/drivers/block/virtio_blk.ko
	Depends []string // direct dependencies, by name
}

// Resolve returns the named modules and everything they depend on, each
// once, dependencies before the modules that need them. Modules built into
// the kernel are left out.
func (t *Modules) Resolve(names ...string) ([]Module, error) {
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = kmod.Name(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("kernel modules depend on each other in a cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		rel, ok := t.byName[name]
		if !ok {
			if t.builtin[name] {
				state[name] = 2
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("kernel module %s (needed by %s) is not in %s", name, chain[len(chain)-1], t.dir)
			}
			return fmt.Errorf("kernel module %s is not in %s", name, t.dir)
		}
		if strings.HasPrefix(rel, "!") {
			return fmt.Errorf("kernel module %s is compressed (%s): only plain .ko modules are supported", name, rel[1:])
		}
		state[name] = 1
		mi, err := readModinfo(filepath.Join(t.dir, rel))
		if err != nil {
			return err
		}
		for _, d := range mi.Depends {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, Module{Name: name, Path: rel, Depends: mi.Depends})
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readModinfo(p string) (Modinfo, error) {
	f, err := elf.Open(p)
	if err != nil {
		return Modinfo{}, fmt.Errorf("reading kernel module %s: %w", p, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return Modinfo{}, fmt.Errorf("reading kernel module %s: no .modinfo section", p)
	}
	b, err := s.Data()
	if err != nil {
		return Modinfo{}, fmt.Errorf("reading kernel module %s: .modinfo: %w", p, err)
	}
	mi, err := ParseModinfo(b)
	if err != nil {
		return Modinfo{}, fmt.Errorf("reading kernel module %s: %w", p, err)
	}
	return mi, nil
}

// moduleSet is the modules an archive carries, from one tree.
type moduleSet struct {
	tree *Modules
	mods map[string]Module
	root string // where the modules go in the archive: lib/modules, or kmod.PrestageDir
}

// AddModules adds the named modules of t and their dependencies under
// lib/modules/RELEASE/, with a modules.dep for them all (and the tree's
// modules.builtin). It returns the modules added, in load order. All the
// modules of one archive come from one tree.
func (a *Archive) AddModules(t *Modules, names ...string) ([]Module, error) {
	return a.addModules("lib/modules", t, names...)
}

func (a *Archive) addModules(root string, t *Modules, names ...string) ([]Module, error) {
	if a.modules != nil && a.modules.tree != t {
		return nil, errors.New("initramfs: modules from two module trees in one archive")
	}
	mods, err := t.Resolve(names...)
	if err != nil {
		return nil, err
	}
	if a.modules == nil {
		a.modules = &moduleSet{tree: t, mods: map[string]Module{}, root: root}
	}
	for _, m := range mods {
		a.modules.mods[m.Name] = m
	}
	return mods, nil
}

// depsOf returns the transitive dependencies of m in depmod's order: the
// one to load first last.
func (s *moduleSet) depsOf(m Module) []string {
	var order []string // load order
	seen := map[string]bool{}
	var visit func(name string)
	visit = func(name string) {
		for _, d := range s.mods[name].Depends {
			if seen[d] {
				continue
			}
			seen[d] = true
			visit(d)
			if dm, ok := s.mods[d]; ok { // built-in ones have no file
				order = append(order, dm.Path)
			}
		}
	}
	visit(m.Name)
	for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
		order[i], order[j] = order[j], order[i]
	}
	return order
}

func (s *moduleSet) files() []File {
	root := path.Join(s.root, s.tree.release)
	dep := kmod.Dep{}
	names := make([]string, 0, len(s.mods))
	for n := range s.mods {
		names = append(names, n)
	}
	sort.Strings(names)
	var files []File
	for _, n := range names {
		m := s.mods[n]
		dep[m.Path] = s.depsOf(m)
		files = append(files, File{Path: path.Join(root, m.Path), Source: filepath.Join(s.tree.dir, m.Path), Mode: 0o644})
	}
	files = append(files, File{Path: path.Join(root, "modules.dep"), Data: dep.Marshal(), Mode: 0o644})
	if _, err := os.Stat(filepath.Join(s.tree.dir, "modules.builtin")); err == nil {
		files = append(files, File{Path: path.Join(root, "modules.builtin"), Source: filepath.Join(s.tree.dir, "modules.builtin"), Mode: 0o644})
	}
	return files
}
