// Package bootdisk makes a bootable stagehand disk: the GPT layout, an ESP
// with the bootloader and slot a installed, and META. It is apart from
// package boot because it installs a backend, and the backends import boot.
package bootdisk
