package boot

import (
	"context"
	"io"

	"github.com/stagehand-dev/stagehand/meta"
)

// Image is what a slot boots.
type Image struct {
	Kernel    io.Reader // the kernel (bzImage)
	Initramfs io.Reader
	Cmdline   string // kernel command line; the backend adds stagehand.slot=
	Version   string // OS version, shown in the menu and kept in the entry
}

// SlotEntry is a slot as the bootloader holds it.
type SlotEntry struct {
	Slot    meta.Slot
	Version string
	Cmdline string // the full command line, stagehand.slot= included
	Kernel  string // where the bootloader loads them from
	Initrd  string
	// Tries left and done, when the bootloader counts tries of the slot.
	Counting    bool
	Left, Done  int
	Description string // how the bootloader names it (entry file, menu entry)
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

// SlotParam is the kernel parameter naming the slot a kernel was booted
// from.
const SlotParam = "stagehand.slot"
