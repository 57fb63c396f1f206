// Package vm runs a QEMU x86-64 machine for the VM tests: OVMF firmware with
// its own variable store kept across the boots of one scenario, a virtio
// disk image, no network, and the serial console captured to a log file and
// matched against expectations with bounded timeouts.
package vm
