// Package crashstate records what a disk image sees (writes, flushes, EFI
// variable changes) and generates the images a power cut could leave,
// CrashMonkey-style, for a checker to boot.
package crashstate
