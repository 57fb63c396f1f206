// Package reboot reboots this machine, or the host whose root file system a
// container mounts, through its init system, so that its services stop and
// its file systems are unmounted before the reset.
package reboot
