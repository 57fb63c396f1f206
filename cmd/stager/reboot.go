package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// rebooter is how this system reboots; hostRebooter is the real one, tests
// use fakes.
type rebooter struct {
	systemdDir string   // exists while systemd runs
	rebootCmds []string // where the init system's reboot command may lie
	run        func(ctx context.Context, name string, args ...string) ([]byte, error)
	syscall    func() error // reboot(2)
	pid        int
}

var hostRebooter = rebooter{
	systemdDir: "/run/systemd/system",
	rebootCmds: []string{"/sbin/reboot", "/usr/sbin/reboot", "/bin/reboot", "/usr/bin/reboot"},
	run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, name, args...).CombinedOutput()
	},
	syscall: func() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) },
	pid:     os.Getpid(),
}

// rebootSystem syncs, then reboots through the init system, which stops
// the services and unmounts the file systems: systemctl when systemd runs,
// else the system's reboot command (busybox, sysvinit, OpenRC: it asks
// init). Only without either, or as PID 1, with the reboot syscall, which
// leaves every file system still mounted (the ESP too) marked dirty.
func rebootSystem(cmd *cobra.Command) error {
	return hostRebooter.reboot(cmd.Context(), cmd.ErrOrStderr())
}

func (r rebooter) reboot(ctx context.Context, stderr io.Writer) error {
	unix.Sync()
	if _, err := os.Stat(r.systemdDir); err == nil {
		fmt.Fprintln(stderr, "rebooting through systemd")
		if out, err := r.run(ctx, "systemctl", "reboot"); err != nil {
			return fmt.Errorf("systemctl reboot: %v: %s", err, out)
		}
		return nil
	}
	if r.pid != 1 {
		for _, p := range r.rebootCmds {
			if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				continue
			}
			fmt.Fprintf(stderr, "rebooting through the init system (%s)\n", p)
			if out, err := r.run(ctx, p); err != nil {
				return fmt.Errorf("%s: %v: %s", p, err, out)
			}
			return nil
		}
	}
	fmt.Fprintln(stderr, "rebooting")
	if err := r.syscall(); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
