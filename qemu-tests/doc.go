// Package qemutests holds stagehand's VM tests: whole scenarios booted under
// QEMU with OVMF, systemd-boot and real Debian kernels, driven through the
// serial console. The tests carry the build tag vm (make qemu-test).
package qemutests
