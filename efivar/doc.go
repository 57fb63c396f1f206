// Package efivar reads and writes EFI variables: through efivarfs on a
// running system (FS), or as files in a plain directory (Dir) for tests and
// for hosts without EFI; and the boot manager's load options in them
// (Boot####, BootOrder).
package efivar
