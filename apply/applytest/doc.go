// Package applytest is a simulated stagehand machine for tests: a disk
// image made by the real disk init, its EFI variables in a directory, and
// the firmware and systemd-boot played in a few lines, so that a reboot
// runs the real early-boot flow (apply.Boot) on the image. The tests of
// apply, of the crash states and of the fleet agent all boot it.
//
// A machine made with NewOn or NewDiskOn and bootdisk.GRUBBIOS or GRUBEFI
// boots with GRUB instead: Firmware runs grub.Choose, the Go model of
// stagehand's grub.cfg, on grubenv as the ESP holds it, writes the count
// back in place as save_env does, boots the wanted slot's entry or its
// fallback, and keeps the boot's stagehand.grub= for the command line of
// the boot's Opens (Cmdline); a kexec passes it on and is counted as a
// try (boot.KexecCounter), as prestage does.
package applytest
