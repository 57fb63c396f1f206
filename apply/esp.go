package apply

import (
	"fmt"
	"io"
	"sync"

	"github.com/stagehand-dev/stagehand/boot"
)

// lazyESP is the ESP, opened at its first use: a settled boot (see
// state.settled), most boots, reads nothing of it, and opening it reads
// and checks its whole FAT.
type lazyESP struct {
	open func() (boot.FS, error)
	once sync.Once
	fs   boot.FS
	err  error
}

var (
	_ boot.FS         = (*lazyESP)(nil)
	_ boot.Overwriter = (*lazyESP)(nil)
)

func (l *lazyESP) get() (boot.FS, error) {
	l.once.Do(func() { l.fs, l.err = l.open() })
	return l.fs, l.err
}

func (l *lazyESP) ReadFile(name string) ([]byte, error) {
	fs, err := l.get()
	if err != nil {
		return nil, err
	}
	return fs.ReadFile(name)
}

func (l *lazyESP) Open(name string) (io.ReadCloser, error) {
	fs, err := l.get()
	if err != nil {
		return nil, err
	}
	return fs.Open(name)
}

func (l *lazyESP) WriteFile(name string, r io.Reader) error {
	fs, err := l.get()
	if err != nil {
		return err
	}
	return fs.WriteFile(name, r)
}

func (l *lazyESP) ReadDir(name string) ([]string, error) {
	fs, err := l.get()
	if err != nil {
		return nil, err
	}
	return fs.ReadDir(name)
}

func (l *lazyESP) Rename(from, to string) error {
	fs, err := l.get()
	if err != nil {
		return err
	}
	return fs.Rename(from, to)
}

func (l *lazyESP) Remove(name string) error {
	fs, err := l.get()
	if err != nil {
		return err
	}
	return fs.Remove(name)
}

// OverwriteFile implements boot.Overwriter, as the GRUB backend writes
// grubenv, when the ESP opened does (a fat.Volume, a boot.Dir).
func (l *lazyESP) OverwriteFile(name string, off int64, p []byte) error {
	fsys, err := l.get()
	if err != nil {
		return err
	}
	ow, ok := fsys.(boot.Overwriter)
	if !ok {
		return fmt.Errorf("the ESP (%T) cannot write over %s in place", fsys, name)
	}
	return ow.OverwriteFile(name, off, p)
}

// Sync of an ESP never opened has nothing to make durable.
func (l *lazyESP) Sync() error {
	if l.fs == nil && l.err == nil {
		return nil
	}
	fs, err := l.get()
	if err != nil {
		return err
	}
	return fs.Sync()
}
