package main

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// rebootSystem syncs, then reboots through the init system when one runs
// (so that services stop cleanly), else with the reboot syscall.
func rebootSystem(cmd *cobra.Command) error {
	unix.Sync()
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "rebooting through systemd")
		if out, err := exec.CommandContext(cmd.Context(), "systemctl", "reboot").CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl reboot: %v: %s", err, out)
		}
		return nil
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "rebooting")
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
