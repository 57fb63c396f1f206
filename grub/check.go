package grub

import (
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/meta"
)

// CheckImage tells whether InstallSlot would take img's version and command
// line for slot, writing nothing: for a tool that checks every input before
// it touches a disk (bootdisk.Adopt).
func CheckImage(slot meta.Slot, img boot.Image) error {
	c := slotCfg{Version: img.Version, Cmdline: slotCmdline(img.Cmdline), Tries: min(max(img.Tries, 1), MaxTries)}
	return c.check(slot)
}
