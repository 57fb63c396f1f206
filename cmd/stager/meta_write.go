package main

import (
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
)

// updateMETA opens the disk for writing, applies fn to META and commits it.
func updateMETA(cmd *cobra.Command, path string, fn func(*meta.Block) error) (*meta.Store, error) {
	s, d, err := disk.OpenMETA(cmd.Context(), path, true)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return s, s.Update(fn)
}

func newMetaSetCmd() *cobra.Command {
	var asHex bool
	cmd := &cobra.Command{
		Use:   "set TAG VALUE",
		Short: "Set one tag to a text value (or hex with --hex)",
		Example: `  stager meta set talos-staged-image-ref ghcr.io/siderolabs/installer:v1.9.0 --disk disk.img
  stager meta set 0x20 --hex 00ff10 --disk /dev/vda`,
		Args: cli.ExactArgs(2, "a TAG and a VALUE"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.Flags().BoolVar(&asHex, "hex", false, "VALUE is hex")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		tag, err := parseTag(args[0])
		if err != nil {
			return err
		}
		value := []byte(args[1])
		if asHex {
			if value, err = hex.DecodeString(args[1]); err != nil {
				return cli.Usage("value %q is not hex: %v", args[1], err)
			}
		}
		if err := meta.CheckValue(tag, value); err != nil {
			return cli.Usage("refusing to set tag 0x%02x: %w", tag, err)
		}
		path, err := diskPath()
		if err != nil {
			return err
		}
		s, err := updateMETA(cmd, path, func(b *meta.Block) error { return b.Set(tag, value) })
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "set tag 0x%02x (%d bytes) in META on %s, generation %d\n", tag, len(value), s.Name(), s.Generation())
		return nil
	}
	return cmd
}

func newMetaDeleteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete TAG",
		Short: "Delete one tag",
		Args:  cli.ExactArgs(1, "one TAG"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		tag, err := parseTag(args[0])
		if err != nil {
			return err
		}
		if tag == meta.TagGeneration {
			return cli.UsageError{Err: meta.CheckValue(tag, nil)}
		}
		path, err := diskPath()
		if err != nil {
			return err
		}
		errAbsent := fmt.Errorf("tag 0x%02x is not set", tag)
		s, err := updateMETA(cmd, path, func(b *meta.Block) error {
			if !b.Delete(tag) {
				return errAbsent
			}
			return nil
		})
		if err == errAbsent {
			fmt.Fprintf(cmd.OutOrStdout(), "tag 0x%02x is not set in META on %s: nothing to delete\n", tag, path)
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "deleted tag 0x%02x from META on %s, generation %d\n", tag, s.Name(), s.Generation())
		return nil
	}
	return cmd
}

func newMetaFormatCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "format",
		Short: "Write an empty META over both copies",
		Long: `Write an empty META (generation 1) over both copies. This is the way back
from a META whose two copies are corrupt. A META that still reads and holds
tags is only replaced with --force: its upgrade state would be lost.`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.Flags().BoolVar(&force, "force", false, "replace a META that still holds tags")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		path, err := diskPath()
		if err != nil {
			return err
		}
		d, err := disk.Open(path, true)
		if err != nil {
			return err
		}
		defer d.Close()
		r, err := d.META()
		if err != nil {
			return err
		}
		if err := d.Lock(cmd.Context(), true); err != nil {
			return err
		}
		if s, err := meta.Load(r, r.Name()); err == nil && len(s.Block().Entries()) > 0 && !force {
			return fmt.Errorf("META on %s is valid and holds %d tags: pass --force to replace it with an empty one", r.Name(), len(s.Block().Entries()))
		}
		if _, err := meta.Format(r, r.Name()); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote an empty META on %s\n", r.Name())
		return nil
	}
	return cmd
}
