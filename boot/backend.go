package boot

import (
	"context"
	"errors"
	"io"

	"github.com/stagehand-dev/stagehand/meta"
)

// Image is what a slot boots: a kernel and an initramfs, or a unified
// kernel image.
type Image struct {
	Kernel    io.Reader // the kernel (bzImage)
	Initramfs io.Reader
	// UKI, instead of Kernel and Initramfs, is a unified kernel image
	// (systemd-stub with the kernel, initramfs, command line and
	// os-release in its sections): installed as it is, a Type #2 entry
	// for systemd-boot. Cmdline and Version are then the UKI's own.
	UKI     io.Reader
	Cmdline string // kernel command line; the backend adds stagehand.slot=
	Version string // OS version, shown in the menu and kept in the entry
	// Tries > 0 names the entry for systemd-boot's boot counting
	// (stagehand-b+Tries.conf), so that the loader counts the firmware
	// boots of it and skips it once none is left; 0 installs an entry
	// that is not counted.
	Tries int
}

// FirmwareRefuses says whether firmware with Secure Boot on (secureBoot)
// refuses to start e: a UKI with no signature at all. A signed one the
// firmware may still refuse; only it knows its db.
func (e SlotEntry) FirmwareRefuses(secureBoot bool) bool {
	return secureBoot && e.UKI && !e.Signed
}

// SlotEntry is a slot as the bootloader holds it.
type SlotEntry struct {
	Slot    meta.Slot
	Version string
	Cmdline string // the full command line, stagehand.slot= included
	Kernel  string // where the bootloader loads them from (the UKI's path for a UKI)
	Initrd  string
	UKI     bool // a unified kernel image: Cmdline is its .cmdline with stagehand.slot= added
	// Signed: the UKI carries an Authenticode signature (its PE
	// certificate table is not empty). Whether the firmware trusts it is
	// the firmware's to check at boot; kexec checks only the kernel inside.
	Signed bool
	// Tries left and done, when the bootloader counts tries of the slot.
	Counting    bool
	Left, Done  int
	Description string // how the bootloader names it (entry file, menu entry)
	SortKey     string // a Type #1 entry's sort-key, which orders the menu (CountedDefault)
}

// Backend is a bootloader that holds stagehand's two slots. systemd-boot is
// the first; GRUB and a firmware-less kexec-only backend can follow. Boot
// once (systemd-boot's LoaderEntryOneShot) and boot counting come as
// further interfaces that a backend may implement beside this one.
type Backend interface {
	// InstallLoader installs the bootloader itself; installing it again
	// replaces it.
	InstallLoader(ctx context.Context) error
	// InstallSlot writes img into slot, replacing what the slot held. The
	// slot's entry is written last, after its kernel and initramfs.
	InstallSlot(ctx context.Context, slot meta.Slot, img Image) error
	// SetDefault makes slot the one that boots when nothing else is asked.
	SetDefault(ctx context.Context, slot meta.Slot) error
	// Default returns the default slot.
	Default(ctx context.Context) (meta.Slot, error)
	// Slots returns the installed slots, a before b.
	Slots(ctx context.Context) ([]SlotEntry, error)
}

// Loader is a backend as the boot flow needs it: slots, boot once,
// blessing of counted entries, and reading a slot back. Every backend is
// one.
type Loader interface {
	Backend
	BootOnce
	Blesser
	SlotReader
}

// BootOnce is a backend that can boot a slot once, at the next firmware
// boot only (systemd-boot's LoaderEntryOneShot).
type BootOnce interface {
	// SetBootOnce makes slot boot at the next firmware boot, once.
	SetBootOnce(ctx context.Context, slot meta.Slot) error
	// ClearBootOnce drops a boot once that was set and not yet used.
	ClearBootOnce(ctx context.Context) error
	// BootOnce returns the slot set to boot once, if any.
	BootOnce(ctx context.Context) (meta.Slot, bool, error)
}

// Blesser is a backend whose trial entries count tries.
type Blesser interface {
	// Bless marks slot's entry good: it stops counting its tries
	// (stagehand-b+1-1.conf becomes stagehand-b.conf). Blessing a slot
	// whose entry does not count tries does nothing.
	Bless(ctx context.Context, slot meta.Slot) error
}

// SlotReader gives back what a slot holds, to verify it after writing and
// to kexec it.
type SlotReader interface {
	// OpenSlot opens slot's kernel and initramfs for reading, without
	// holding them in memory; close the result.
	OpenSlot(ctx context.Context, slot meta.Slot) (*SlotFiles, error)
}

// SlotFiles are a slot's kernel and initramfs, open for reading.
type SlotFiles struct {
	Entry     SlotEntry
	Kernel    io.Reader
	Initramfs io.Reader   // the entry's initrds, one after the other
	UKI       io.Reader   // for a UKI entry: the whole image, as installed
	Closers   []io.Closer // what Close closes: the files the readers read
}

// Close closes the files.
func (f *SlotFiles) Close() error {
	var err error
	for _, c := range f.Closers {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// KexecCounter is a backend whose bootloader keeps a trial armed until it
// has counted the trial's tries (GRUB's grubenv), where systemd-boot's
// boot-once is spent by one firmware boot. A kexec into the trial bypasses
// the bootloader's count: without CountKexec, a trial of N tries would get
// the kexec and N firmware boots.
type KexecCounter interface {
	// CountKexec records, before a kexec into slot's trial, the try the
	// bootloader would have counted had it started the slot itself. It
	// does nothing when slot is not on trial or has no tries left.
	CountKexec(ctx context.Context, slot meta.Slot) error
}

// BootRecord is a backend that can tell, from what the bootloader recorded
// about this boot alone, without reading the ESP, that the running slot
// booted from its plain entry.
type BootRecord interface {
	// BootedPlain reports whether this boot came from slot's entry with no
	// boot counter. False when the bootloader says nothing, or something
	// else: the caller then looks at the ESP.
	BootedPlain(ctx context.Context, slot meta.Slot) (bool, error)
	// BootedSlot is the slot whose entry the bootloader booted, when it
	// says; false when it names none of stagehand's entries.
	BootedSlot(ctx context.Context) (meta.Slot, bool, error)
}

// CountedDefault is a backend that can arm a trial without boot-once, for
// firmware that takes no variable writes at run time: the default follows
// the trial's counted entry while it has tries left, and the other slot
// once the bootloader has counted them all, so the bootloader gives the
// trial up by itself.
type CountedDefault interface {
	// SetCountedDefault makes the default the slot the bootloader lists
	// first among those with tries left, and checks that this is slot
	// while its counted entry has tries left.
	SetCountedDefault(ctx context.Context, slot meta.Slot) error
	// CountedDefault tells whether the default is so set.
	CountedDefault(ctx context.Context) (bool, error)
}

// FirmwareFallback is a backend that can make the UEFI boot manager start
// the bootloader again when it fails an entry and returns: by the UEFI
// specification (3.1.1) the boot manager then tries the next Boot#### of
// BootOrder, which on many machines is a shell, a setup screen or the
// network, all waiting for a person.
type FirmwareFallback interface {
	// EnsureFirmwareFallback puts two load options of the bootloader at
	// the front of BootOrder, so that a first start that fails its
	// one-shot entry is followed by a second that boots the default.
	EnsureFirmwareFallback(ctx context.Context) error
}

// ErrSlotEmpty marks a slot that holds no entry.
var ErrSlotEmpty = errors.New("the slot has no loader entry")

// ErrNoEFIVars is returned by a backend made without the firmware's
// variables (systemdboot.WithEFIVars) for what needs them: boot once, the
// boot record, the firmware's boot options.
var ErrNoEFIVars = errors.New("systemd-boot backend has no EFI variables to set boot once in (WithEFIVars)")

// SlotParam is the kernel parameter naming the slot a kernel was booted
// from.
const SlotParam = "stagehand.slot"
