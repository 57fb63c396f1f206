package main

import (
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/disk"
)

// addDiskFlag adds --disk to cmd and returns a function that resolves it:
// the flag's value, or the disk that booted.
func addDiskFlag(cmd *cobra.Command) func() (string, error) {
	var path string
	cmd.Flags().StringVar(&path, "disk", "", "image file or block device holding the stagehand layout (default: the disk that booted)")
	return func() (string, error) {
		if path != "" {
			return path, nil
		}
		return disk.Booted()
	}
}
