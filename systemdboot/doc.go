// Package systemdboot is stagehand's systemd-boot backend: each slot is a
// Boot Loader Specification entry on the ESP (a Type #1 entry with its
// kernel and initramfs, or a unified kernel image), loader.conf names the
// default, and systemd-boot's EFI variables boot a slot once and tell which
// entry booted. It implements package boot's interfaces, through which the
// boot flow drives it as it would any other bootloader.
package systemdboot
