package kexec

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnavailable marks a kexec that cannot happen on this machine; the
// errno stays in the chain (errors.Is(err, unix.EPERM) works).
var ErrUnavailable = errors.New("kexec unavailable")

// unavailable are the errnos after which a firmware reboot is the way on:
// no kexec_file_load (ENOSYS), not allowed or locked down (EPERM), a kexec
// already loaded or in progress (EBUSY), a kernel whose signature the
// policy refuses (EKEYREJECTED, EBADMSG, ENOKEY).
var unavailable = []unix.Errno{unix.ENOSYS, unix.EPERM, unix.EBUSY, unix.EKEYREJECTED, unix.EBADMSG, unix.ENOKEY}

// Load loads kernel and initramfs (regular files: a memfd will do) to boot
// with cmdline at the next Exec.
func Load(kernel, initramfs *os.File, cmdline string) error {
	flags := 0
	initrdFd := -1
	if initramfs != nil {
		initrdFd = int(initramfs.Fd())
	} else {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
	}
	var err error
	for {
		err = unix.KexecFileLoad(int(kernel.Fd()), initrdFd, cmdline, flags)
		if err != unix.EINTR {
			break
		}
	}
	if err == nil {
		return nil
	}
	err = os.NewSyscallError("kexec_file_load", err)
	for _, e := range unavailable {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return err
}

// Exec syncs and jumps into the kernel loaded by Load. It returns only on
// failure.
func Exec() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, os.NewSyscallError("reboot(KEXEC)", err))
	}
	return nil
}

// MemFile copies r into an anonymous in-memory file (memfd) for Load.
func MemFile(name string, r io.Reader) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return nil, fmt.Errorf("copying %s into memory: %w", name, err)
	}
	return f, nil
}

// SecurityFS is where securityfs is mounted; Lockdown reads it.
const SecurityFS = "/sys/kernel/security"

// Lockdown returns the kernel's lockdown mode ("none", "integrity",
// "confidentiality"), or "" when the kernel does not say (no securityfs
// mounted at SecurityFS, or no lockdown support). Under lockdown only
// kernels signed by a key the running kernel trusts load.
func Lockdown() string {
	b, err := os.ReadFile(SecurityFS + "/lockdown")
	if err != nil {
		return ""
	}
	return lockdownMode(string(b))
}

// lockdownMode is the mode in brackets of securityfs's lockdown file
// ("none [integrity] confidentiality").
func lockdownMode(s string) string {
	for _, w := range strings.Fields(s) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return strings.Trim(w, "[]")
		}
	}
	return ""
}
