package main

import (
	"cmp"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/internal/cli"
)

func newRolloutCmd() *cobra.Command {
	g := cli.GroupOnly(&cobra.Command{Use: "rollout", Short: "Look at a fleet rollout"})
	g.AddCommand(newRolloutStatusCmd())
	return g
}

func newRolloutStatusCmd() *cobra.Command {
	var l fleet.Lock
	var selector string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Who holds the fleet lock, whether the rollout is stopped, and each node's version and phase",
		Long: `Print the rollout as the cluster records it: each Lease of the fleet lock,
who holds it and since when; whether the rollout is stopped, by which node
and why; and each node's version, slot, phase and last transition (its
stagehand.dev/ labels and annotations). It only reads (get of Leases, list
of nodes): any account that may read them can run it, anywhere.

Exit codes: 0 printed, 1 failed, 2 bad usage.`,
		Example: `  stagehand-agent rollout status
  stagehand-agent rollout status --json | jq .stopped`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	newClient := kubeFlags(cmd, &l)
	cmd.Flags().StringVar(&selector, "selector", "", "only the nodes this label selector matches")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print it as JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cs, err := newClient()
		if err != nil {
			return err
		}
		r, err := fleet.ReadRollout(cmd.Context(), cs, l, selector)
		if err != nil {
			return err
		}
		if asJSON {
			return cli.WriteJSON(cmd.OutOrStdout(), r)
		}
		printRollout(cmd.OutOrStdout(), r, time.Now())
		return nil
	}
	return cmd
}

func printRollout(w io.Writer, r *fleet.Rollout, now time.Time) {
	if s := r.Stopped; s != nil {
		fmt.Fprintf(w, "rollout: STOPPED since %s by node %s: %s\n  (fix the cause, then stagehand-agent node resume)\n", s.Time.UTC().Format(time.RFC3339), s.Node, s.Reason)
	} else {
		fmt.Fprintln(w, "rollout: running")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "LEASE (%s)\tHOLDER\tSINCE\tRENEWED\n", r.Namespace)
	for _, le := range r.Leases {
		if le.Holder == "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\n", le.Name)
			continue
		}
		renewed := since(le.Renewed, now)
		if le.Expired {
			renewed += " (expired)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", le.Name, le.Holder, stamp(le.Acquired), renewed)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tVERSION\tSLOT\tPHASE\tLAST TRANSITION\tNOTE")
	for _, n := range r.Nodes {
		var note []string
		if n.Target != "" {
			note = append(note, "upgrading to "+n.Target)
		}
		if n.Cordoned {
			note = append(note, "cordoned by stagehand")
		} else if n.Unschedulable {
			note = append(note, "cordoned")
		}
		if n.Phase == "rolled-back" && n.Reason != "" {
			note = append(note, n.Reason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, cmp.Or(n.Version, "-"), cmp.Or(n.Slot, "-"), cmp.Or(n.Phase, "-"), cmp.Or(n.LastTransition, "-"), strings.Join(note, "; "))
	}
	tw.Flush()
}

func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func since(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return now.Sub(*t).Round(time.Second).String() + " ago"
}
