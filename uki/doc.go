// Package uki reads and builds unified kernel images: PE/COFF EFI programs
// (systemd-stub) that carry a Linux kernel, its initramfs and its command
// line in the sections .linux, .initrd and .cmdline.
//
// It reads the PE headers itself rather than with the standard library's
// debug/pe: prestage links this package, and debug/pe brings debug/dwarf,
// compress/zlib and their package inits into PID 1; debug/pe also reads the
// COFF symbol and string tables, which no EFI loader reads (it refuses an
// image whose stale symbol table pointer runs past the end), and it cannot
// write. The reader here checks every size and offset against the file and
// bounds what it reads into memory; it is fuzzed (FuzzOpen) and its results
// are checked against debug/pe in the tests.
package uki
