package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/stagehand-dev/stagehand/initramfs/kmod"
)

// PrestagePath is where the pre-stage init goes in the archive; its
// modules go where package kmod says.
const PrestagePath = "prestage"

// PrestageOptions are the inputs of the pre-stage part of an initramfs.
type PrestageOptions struct {
	Binary  string   // the static prestage binary
	Modules *Modules // the kernel's module tree; nil for none
	Names   []string // modules to load before looking for disks
}

// AddPrestage adds the pre-stage init at /prestage (started with
// rdinit=/prestage), the named modules with their dependencies under
// stagehand/modules/RELEASE with a modules.dep, and the list of modules to
// load at etc/stagehand/modules.
func (a *Archive) AddPrestage(o PrestageOptions) error {
	if err := a.AddFile(PrestagePath, o.Binary, 0o755); err != nil {
		return fmt.Errorf("adding prestage: %w", err)
	}
	if len(o.Names) == 0 {
		return nil
	}
	if o.Modules == nil {
		return fmt.Errorf("modules %s asked for, but no module tree given", strings.Join(o.Names, ", "))
	}
	if _, err := a.addModules(kmod.PrestageDir, o.Modules, o.Names...); err != nil {
		return err
	}
	return a.Add(File{Path: kmod.PrestageList, Data: []byte(strings.Join(o.Names, "\n") + "\n"), Mode: 0o644})
}

// WritePrestaged writes the file path: base, then the pre-stage part (o)
// appended as `stager initramfs build` appends it to an OS's initramfs.
func WritePrestaged(path string, base *Archive, o PrestageOptions) error {
	var b bytes.Buffer
	if _, err := base.WriteTo(&b); err != nil {
		return err
	}
	pre := New()
	if err := pre.AddPrestage(o); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	_, err = Append(w, b.Bytes(), pre)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
