package main

import (
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"
	"github.com/stagehand-dev/stagehand/internal/reboot"
)

// thisMachine is how this system reboots; tests replace it with fakes.
var thisMachine reboot.Machine

// rebootSystem syncs, then reboots through the init system, which stops
// the services and unmounts the file systems (see reboot.Machine).
func rebootSystem(cmd *cobra.Command) error {
	return thisMachine.Reboot(cmd.Context(), cli.Logf(cmd))
}
