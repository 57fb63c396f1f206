// Package boot implements the bootloader backends that hold stagehand's two
// slots on the ESP — systemd-boot first, with Type #1 entries, behind an
// interface that GRUB or a kexec-only backend can implement later — and
// InitDisk, which makes a bootable stagehand disk.
package boot
