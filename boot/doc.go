// Package boot holds what every bootloader backend shares: the Backend
// interface and the optional ones the boot flow asks for, the ESP's file
// system, and the checks of a slot's kernel or UKI. Each backend lives in a
// package of its own (systemdboot, grub), so that adding one touches no other.
package boot
