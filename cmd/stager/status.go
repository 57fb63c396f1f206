package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

func newStatusCmd() *cobra.Command {
	var asJSON bool
	var efivars, prom string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the slots, what is staged, and the last transitions with their reasons",
		Long: `Show the upgrade state recorded in META: the slot this system booted from,
the default slot, each slot's state and version, the staged payload, and the
last transitions with their reasons, including those written at early boot by
the pre-stage init.

With --prometheus FILE it writes node-exporter textfile metrics instead
(stagehand_info, stagehand_phase, stagehand_slot_good, stagehand_rollbacks,
stagehand_off_active, stagehand_last_transition_timestamp_seconds), replacing
FILE at once so that the collector never reads half of it; "-" is stdout.`,
		Example: `  stager status
  stager status --json
  stager status --prometheus /var/lib/node-exporter/textfile/stagehand.prom`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&prom, "prometheus", "", "write node-exporter textfile metrics to this file (- for stdout)")
	cmd.Flags().StringVar(&efivars, "efivars", "", "directory of EFI variables in efivarfs format, instead of the firmware's")
	cmd.Flags().MarkHidden("efivars")
	var booted string
	cmd.Flags().StringVar(&booted, "slot", "", "the slot this system runs from (default: stagehand.slot= of the running kernel)")
	cmd.Flags().MarkHidden("slot")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		path, err := diskPath()
		if err != nil {
			return err
		}
		st, err := stage.ReadStatus(cmd.Context(), path)
		if err != nil {
			return err
		}
		switch meta.Slot(booted) {
		case "":
		case meta.SlotA, meta.SlotB:
			st.SetBooted(meta.Slot(booted))
		default:
			return cli.Usage("--slot %q: give a or b", booted)
		}
		var vars efivar.Store
		if efivars != "" {
			vars = efivar.Dir(efivars)
		} else if fs, err := efivar.NewFS(disk.EFIVarsDir); err == nil {
			vars = fs
		}
		loader, err := apply.ReadLoader(cmd.Context(), path, vars)
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: reading the bootloader: %v\n", err)
		}
		if st.Booted == "" && loader != nil && loader.Selected != "" {
			// A UKI booted by the firmware: its command line names no slot.
			st.SetBooted(loader.Selected)
		}
		if prom == "-" {
			return st.WritePrometheus(cmd.OutOrStdout())
		} else if prom != "" {
			return replaceFile(prom, 0o644, st.WritePrometheus)
		}
		if asJSON {
			return cli.WriteJSON(cmd.OutOrStdout(), struct {
				*stage.Status
				Loader *apply.LoaderStatus `json:"loader,omitempty"`
			}{st, loader})
		}
		return printStatus(cmd.OutOrStdout(), st, loader)
	}
	return cmd
}

func printStatus(w io.Writer, st *stage.Status, loader *apply.LoaderStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	booted := string(st.Booted)
	if booted == "" {
		booted = "unknown (no stagehand.slot= on the kernel command line, and the bootloader names no stagehand entry)"
	}
	if st.OffActive != "" {
		fmt.Fprintf(w, "WARNING: %s\n", st.OffActive)
	}
	fmt.Fprintf(tw, "disk:\t%s (META generation %d)\n", st.Disk, st.Generation)
	if st.Damaged != "" {
		fmt.Fprintf(tw, "META:\t%s; the next write repairs it\n", st.Damaged)
	}
	fmt.Fprintf(tw, "booted:\t%s\n", booted)
	def := fmt.Sprintf("%s (META's active slot)", st.Slots.Active)
	if loader != nil && loader.Default != st.Slots.Active {
		def += fmt.Sprintf("; the bootloader's default is %s", loader.Default)
	}
	if loader != nil && loader.BootOnce != "" {
		def += fmt.Sprintf("; boot once: %s", loader.BootOnce)
	}
	fmt.Fprintf(tw, "default:\t%s\n", def)
	fmt.Fprintf(tw, "phase:\t%s\n", st.Slots.Phase)
	for _, s := range []struct {
		name meta.Slot
		ss   meta.SlotState
	}{{meta.SlotA, st.Slots.A}, {meta.SlotB, st.Slots.B}} {
		state := s.ss.State
		if state == "" {
			state = "empty"
		}
		if st.Slots.Trial == s.name && st.Slots.Phase == meta.PhaseTrial {
			state = fmt.Sprintf("trial, %d tries left", st.Slots.TriesLeft)
		}
		line := strings.TrimSpace(strings.Join([]string{state, s.ss.Version, s.ss.Reason}, "  "))
		if st.Slots.Pending == s.name {
			line += "  firmware start pending (confirmed after a kexec: the next firmware boot starts it once and completes its blessing)"
		}
		if loader != nil {
			for _, e := range loader.Entries {
				if e.Slot == s.name {
					line += fmt.Sprintf("  [entry %s, kernel %s", e.Description, e.Kernel)
					if e.Counting {
						line += fmt.Sprintf(", %d tries left, %d done", e.Left, e.Done)
					}
					line += "]"
				}
			}
		}
		fmt.Fprintf(tw, "slot %s:\t%s\n", s.name, line)
	}
	if s := st.Staged; s != nil {
		fmt.Fprintf(tw, "staged:\t%s (%s) for slot %s, %s\n", s.Image, s.Digest, s.Target, s.Time.Format(time.RFC3339))
		var parts []string
		for _, a := range s.Artifacts {
			parts = append(parts, fmt.Sprintf("%s %s", a.Name, humanBytes(a.Size)))
		}
		fmt.Fprintf(tw, "\t%s\n", strings.Join(parts, ", "))
		if s.SignedBy != "" {
			fmt.Fprintf(tw, "signed:\tby key %s (cosign signature verified before staging)\n", s.SignedBy)
		} else {
			fmt.Fprintf(tw, "signed:\tnot checked (staged without --verify-key or a policy rule)\n")
		}
	} else {
		fmt.Fprintf(tw, "staged:\tnothing\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Transitions) > 0 {
		fmt.Fprintln(w, "transitions (oldest first):")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, t := range st.Transitions {
			fmt.Fprintf(tw, "  %s\t%s → %s\tslot %s\t%s\n", t.Time.Format(time.RFC3339), t.From, t.To, t.Slot, t.Reason)
		}
		return tw.Flush()
	}
	return nil
}
