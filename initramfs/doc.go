// Package initramfs builds reproducible newc cpio archives for the kernel's
// initramfs: files, directories, symlinks and device nodes, plus kernel
// modules resolved with their dependencies and a modules.dep, written alone
// or appended to a base initramfs.
package initramfs
