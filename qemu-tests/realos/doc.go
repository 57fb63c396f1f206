// Package realos builds the real systemd OS that the VM tests, the demo and
// the bench boot: Debian bookworm from mmdebstrap, packed as a squashfs in
// each slot's initramfs, with the slot's own layer (the stagehand binaries,
// units and health checks) laid over it at boot.
package realos
