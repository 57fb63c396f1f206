// Command stager stages OS upgrades for the pre-stage init to apply at the
// next boot, and reads and changes the META store. See `stager --help`.
// The Kubernetes agent is stagehand-agent, a binary of its own: stager
// links no Kubernetes or etcd code (TestDeps).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one stager command and returns the exit code: 0 on success,
// 1 when the command failed, 2 on bad usage. Errors are printed as one line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Execute(ctx, newRoot(), args, stdout, stderr)
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "stager",
		Short: "Stage OS upgrades for the next boot, and manage META",
		Long: `stager stages an OS upgrade on an image-based machine: it writes the new
kernel and initramfs to the STAGE partition and records them in META; at the
next boot the pre-stage init applies them to the inactive slot and kexecs
into the new kernel, with automatic rollback if the new system never confirms.

The disk is the one that booted (from the LoaderDevicePartUUID EFI variable
that systemd-boot sets), or the image file or block device given by --disk.

Exit codes: 0 done, 1 failed, 2 bad usage. Rollouts on Kubernetes are
stagehand-agent's (stagehand-agent --help).`,
		Args: cli.UnknownCommand,
	}
	addStageFlags(root)
	root.AddCommand(newMetaCmd())
	root.AddCommand(newStatusCmd(), newCancelCmd(), newImageCmd(), newConfirmCmd(), newRollbackCmd(), newInitramfsCmd(), newCheckCmd())
	root.AddCommand(newDiskCmd(), movedToAgent("node"), movedToAgent("guard"))
	return root
}

// movedToAgent answers a command that moved to stagehand-agent with one
// line saying so (exit 2), hidden from --help.
func movedToAgent(name string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return cli.Usage("`stager %s` moved to the Kubernetes agent: run `stagehand-agent %s` (from the stagehand-agent image)", name, name)
		},
	}
}
