// Package kexec boots a new kernel from the running one with
// kexec_file_load, and says when kexec cannot be used (no support, not
// allowed, busy, or a kernel the lockdown policy refuses) so that the caller
// reboots through the firmware instead.
package kexec
