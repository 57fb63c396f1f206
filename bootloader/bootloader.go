// Package bootloader finds the backend that boots a stagehand disk: GRUB's
// when the ESP holds stagehand's grub.cfg, systemd-boot's otherwise. It is
// the one place that tells them apart; the boot flow sees a boot.Loader.
package bootloader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// Options are what the backends need beyond the ESP.
type Options struct {
	// Vars are the firmware's variables (systemd-boot's boot-once and
	// boot record); nil on a machine without UEFI, or none to use.
	Vars efivar.Store
	// ESP is the ESP's partition, for systemd-boot's firmware fallback
	// entry; nil for none.
	ESP *systemdboot.ESPPartition
	// Cmdline is the running kernel's command line; nil reads
	// /proc/cmdline when first needed ("" where it cannot be read).
	Cmdline *string
}

// Find returns the bootloader backend of the disk whose ESP is esp:
// GRUB's when the ESP holds stagehand's grub.cfg (grub.CfgPath),
// systemd-boot's otherwise. The ESP is read only when a method needs it:
// what the running boot's loader recorded (boot.BootRecord) is answered by
// the loader that booted it, GRUB when the command line carries
// grub.ChoiceParam, which its script adds and a kexec passes on, else
// systemd-boot from its variables. A settled boot thus never reads the
// ESP. The optional interfaces (boot.CountedDefault, FirmwareFallback,
// KexecCounter) do nothing on a backend without them.
func Find(esp boot.FS, o Options) boot.Loader {
	return &found{esp: esp, o: o}
}

// found is the backend Find finds on the ESP, when first needed.
type found struct {
	esp     boot.FS
	o       Options
	once    sync.Once
	l       boot.Loader
	err     error
	cmdOnce sync.Once
	cmdline string
}

var (
	_ boot.Loader           = (*found)(nil)
	_ boot.BootRecord       = (*found)(nil)
	_ boot.CountedDefault   = (*found)(nil)
	_ boot.FirmwareFallback = (*found)(nil)
	_ boot.KexecCounter     = (*found)(nil)
)

func (f *found) runningCmdline() string {
	f.cmdOnce.Do(func() {
		if f.o.Cmdline != nil {
			f.cmdline = *f.o.Cmdline
			return
		}
		b, _ := os.ReadFile("/proc/cmdline")
		f.cmdline = strings.TrimSpace(string(b))
	})
	return f.cmdline
}

func (f *found) grub() *grub.Loader { return grub.New(f.esp, grub.WithCmdline(f.runningCmdline())) }

func (f *found) systemdBoot() *systemdboot.Loader {
	var opts []systemdboot.Option
	if f.o.Vars != nil {
		opts = append(opts, systemdboot.WithEFIVars(f.o.Vars))
	}
	if f.o.ESP != nil {
		opts = append(opts, systemdboot.WithESPPartition(*f.o.ESP))
	}
	return systemdboot.New(f.esp, opts...)
}

// get finds the backend on the ESP.
func (f *found) get() (boot.Loader, error) {
	f.once.Do(func() {
		_, err := f.esp.ReadFile(grub.CfgPath)
		switch {
		case err == nil:
			f.l = f.grub()
		case errors.Is(err, fs.ErrNotExist):
			f.l = f.systemdBoot()
		default:
			f.err = fmt.Errorf("looking for %s on the ESP: %w", grub.CfgPath, err)
		}
	})
	return f.l, f.err
}

// record is the backend that recorded this boot.
func (f *found) record() boot.BootRecord {
	if _, ok := cmdline.Get(f.runningCmdline(), grub.ChoiceParam); ok {
		return f.grub()
	}
	return f.systemdBoot()
}

func (f *found) InstallLoader(ctx context.Context) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.InstallLoader(ctx)
}

func (f *found) InstallSlot(ctx context.Context, slot meta.Slot, img boot.Image) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.InstallSlot(ctx, slot, img)
}

func (f *found) SetDefault(ctx context.Context, slot meta.Slot) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.SetDefault(ctx, slot)
}

func (f *found) Default(ctx context.Context) (meta.Slot, error) {
	l, err := f.get()
	if err != nil {
		return "", err
	}
	return l.Default(ctx)
}

func (f *found) Slots(ctx context.Context) ([]boot.SlotEntry, error) {
	l, err := f.get()
	if err != nil {
		return nil, err
	}
	return l.Slots(ctx)
}

func (f *found) SetBootOnce(ctx context.Context, slot meta.Slot) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.SetBootOnce(ctx, slot)
}

func (f *found) ClearBootOnce(ctx context.Context) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.ClearBootOnce(ctx)
}

func (f *found) BootOnce(ctx context.Context) (meta.Slot, bool, error) {
	l, err := f.get()
	if err != nil {
		return "", false, err
	}
	return l.BootOnce(ctx)
}

func (f *found) Bless(ctx context.Context, slot meta.Slot) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	return l.Bless(ctx, slot)
}

func (f *found) OpenSlot(ctx context.Context, slot meta.Slot) (*boot.SlotFiles, error) {
	l, err := f.get()
	if err != nil {
		return nil, err
	}
	return l.OpenSlot(ctx, slot)
}

func (f *found) BootedPlain(ctx context.Context, slot meta.Slot) (bool, error) {
	return f.record().BootedPlain(ctx, slot)
}

func (f *found) BootedSlot(ctx context.Context) (meta.Slot, bool, error) {
	return f.record().BootedSlot(ctx)
}

// errNoCountedDefault: the backend found arms no trial by its default.
var errNoCountedDefault = errors.New("this bootloader cannot arm a trial by its default")

func (f *found) SetCountedDefault(ctx context.Context, slot meta.Slot) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	cd, ok := l.(boot.CountedDefault)
	if !ok {
		return errNoCountedDefault
	}
	return cd.SetCountedDefault(ctx, slot)
}

func (f *found) CountedDefault(ctx context.Context) (bool, error) {
	l, err := f.get()
	if err != nil {
		return false, err
	}
	cd, ok := l.(boot.CountedDefault)
	if !ok {
		return false, nil
	}
	return cd.CountedDefault(ctx)
}

func (f *found) EnsureFirmwareFallback(ctx context.Context) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	if ff, ok := l.(boot.FirmwareFallback); ok {
		return ff.EnsureFirmwareFallback(ctx)
	}
	return nil
}

func (f *found) CountKexec(ctx context.Context, slot meta.Slot) error {
	l, err := f.get()
	if err != nil {
		return err
	}
	if kc, ok := l.(boot.KexecCounter); ok {
		return kc.CountKexec(ctx, slot)
	}
	return nil
}
