// Package install puts Debian's stock GRUB 2.06 on a stagehand disk
// without grub-install or a loop device: BuildImage runs grub-mkimage for
// a platform, BIOS writes an i386-pc core image into the disk's BIOS boot
// partition and GRUB's boot.img into its MBR, as grub-bios-setup does, and
// EFI puts an x86_64-efi image at the ESP's removable path. Either GRUB
// finds grub.cfg on the ESP (BIOSPrefix, EFIPrefix); what it finds there,
// grub.cfg, grubenv and the slots, is package grub's, written by its
// Loader (grub.Loader.InstallLoader).
//
// It is a package apart from grub, the backend, because prestage links
// the backend and must stay small: the installer runs grub-mkimage
// (os/exec) and checks PE images (debug/pe), which only the tools that
// make disks need.
package install
