package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/stage"
)

func newCancelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel",
		Short: "Drop the staged upgrade before it is applied",
		Long:  "Drop the staged upgrade: META forgets it first, then its bytes in STAGE are cleared. An upgrade already being applied or on trial is not cancelled: use rollback.",
		Args:  cli.ExactArgs(0, "no arguments"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		path, err := diskPath()
		if err != nil {
			return err
		}
		st, err := stage.Cancel(cmd.Context(), path, time.Now())
		if errors.Is(err, stage.ErrNothingStaged) {
			fmt.Fprintln(cmd.OutOrStdout(), "nothing is staged: nothing to cancel")
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "cancelled the staged upgrade %s (%s)\n", st.Image, st.Digest)
		return nil
	}
	return cmd
}
