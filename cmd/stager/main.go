// Command stager stages OS upgrades for the pre-stage init to apply at the
// next boot, and reads and changes the META store. See `stager --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks bad command-line input (exit code 2).
type usageError struct{ error }

// run executes one stager command and returns the exit code: 0 on success,
// 1 when the command failed, 2 on bad usage (stager node upgrade has 3 and
// 4 too). Errors are printed as one line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
	fmt.Fprintf(stderr, "stager: %s\n", msg)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
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
that systemd-boot sets), or the image file or block device given by --disk.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          unknownCommand,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see --help)", err)}
	})
	addStageFlags(root)
	root.AddCommand(newMetaCmd())
	root.AddCommand(newStatusCmd(), newCancelCmd(), newImageCmd(), newConfirmCmd(), newRollbackCmd(), newInitramfsCmd(), newCheckCmd())
	root.AddCommand(newDiskCmd(), newGuardCmd(), newNodeCmd())
	return root
}

// unknownCommand refuses arguments to a command that takes none, as an
// unknown subcommand, suggesting the nearest one.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	hint := ""
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		hint = fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageError{fmt.Errorf("unknown command %q for %q%s (see %s --help)", args[0], cmd.CommandPath(), hint, cmd.CommandPath())}
}

// groupOnly makes cmd, a command that only groups subcommands, answer an
// unknown subcommand with a usage error that suggests the nearest one.
func groupOnly(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.FParseErrWhitelist.UnknownFlags = true
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := unknownCommand(cmd, args); err != nil {
			return err
		}
		return cmd.Help()
	}
	return cmd
}

// exactArgs is cobra.ExactArgs with a usage error that says what is missing.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %s (got %d arguments; see --help)", cmd.CommandPath(), names, len(args))}
		}
		return nil
	}
}
