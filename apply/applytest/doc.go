// Package applytest is a simulated stagehand machine for tests: a disk
// image made by the real disk init, its EFI variables in a directory, and
// the firmware and systemd-boot played in a few lines, so that a reboot
// runs the real early-boot flow (apply.Boot) on the image. The tests of
// apply, of the crash states and of the fleet agent all boot it.
package applytest
