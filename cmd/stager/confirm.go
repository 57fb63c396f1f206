package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// flowFlags are the flags of the commands that run the boot flow: the disk,
// and, hidden, EFI variables from a directory and the running slot (for
// tests and for working on an image from another machine).
type flowFlags struct {
	disk          func() (string, error)
	efivars, slot string
}

func addFlowFlags(cmd *cobra.Command) *flowFlags {
	f := &flowFlags{disk: cli.AddDiskFlag(cmd, nil)}
	cmd.Flags().StringVar(&f.efivars, "efivars", "", "directory of EFI variables in efivarfs format, instead of the firmware's")
	cmd.Flags().StringVar(&f.slot, "slot", "", "the slot this system runs from (default: stagehand.slot= of the running kernel)")
	cmd.Flags().MarkHidden("efivars")
	cmd.Flags().MarkHidden("slot")
	return f
}

// open opens the disk for the boot flow.
func (f *flowFlags) open(ctx context.Context) (*apply.Disk, error) {
	path, err := f.disk()
	if err != nil {
		return nil, err
	}
	dk, err := openFlow(ctx, path, f.efivars)
	if err != nil {
		return nil, err
	}
	if f.slot != "" {
		dk.Booted = meta.Slot(f.slot)
	}
	return dk, nil
}

// openFlow opens the disk for the boot flow with the running kernel's slot
// and this machine's EFI variables (--efivars for tests and images; none on
// a legacy BIOS).
func openFlow(ctx context.Context, path, efivars string) (*apply.Disk, error) {
	var vars efivar.Store
	if efivars != "" {
		vars = efivar.Dir(efivars)
	} else if efivar.UEFIUnder("/") {
		fs, err := efivar.NewFS(disk.EFIVarsDir)
		if err != nil {
			return nil, fmt.Errorf("EFI variables: %w", err)
		}
		vars = fs
	}
	dk, err := apply.Open(ctx, path, vars)
	if err != nil {
		return nil, err
	}
	dk.Booted = stage.BootedSlot()
	return dk, nil
}

func newConfirmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "confirm",
		Short: "Mark the running slot good and make it the default",
		Long: `Confirm the slot this system booted from: its trial ends, its boot entry is
blessed (the boot counter dropped) and it becomes the default; the slot it
replaces is kept for rollback. Run it once the system is healthy, from a unit
ordered after boot-complete.target (see contrib/stagehand-confirm.service).
Confirming a slot that already is is a no-op.`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	flags := addFlowFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		dk, err := flags.open(cmd.Context())
		if err != nil {
			return err
		}
		defer dk.Close()
		res, err := apply.Confirm(cmd.Context(), &dk.Env)
		if err != nil {
			return err
		}
		if res.Staged != nil {
			if err := stage.Clear(dk.STAGE, res.Staged); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: clearing the applied payload from STAGE: %v\n", err)
			}
		}
		fmt.Fprintln(cmd.OutOrStdout(), res.Message)
		return nil
	}
	return cmd
}

func newRollbackCmd() *cobra.Command {
	var reboot bool
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Make the other slot the default, if it holds a good image",
		Long: `Make the other slot the default when it holds a good image; on a slot that is
on trial, give the trial up (the slot is marked bad and the confirmed slot
stays the default). With --reboot, reboot into it at once.`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	flags := addFlowFlags(cmd)
	cmd.Flags().BoolVar(&reboot, "reboot", false, "reboot once the default is switched")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		dk, err := flags.open(cmd.Context())
		if err != nil {
			return err
		}
		res, err := apply.Rollback(cmd.Context(), &dk.Env)
		if err == nil && res.Staged != nil {
			if err := stage.Clear(dk.STAGE, res.Staged); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: clearing the given-up payload from STAGE: %v\n", err)
			}
		}
		if cerr := dk.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), res.Message)
		if reboot {
			return rebootSystem(cmd)
		}
		return nil
	}
	return cmd
}
