package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/health"
)

func newCheckCmd() *cobra.Command {
	var (
		dirs           []string
		timeout        time.Duration
		reboot, asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Run the health checks that gate the confirm",
		Long: `Run the health checks: every executable in required.d and wanted.d under
/usr/lib/stagehand/check, /run/stagehand/check and /etc/stagehand/check
(a name in a later directory replaces the same name in an earlier one; a
symlink to /dev/null masks it), in name order, each with a timeout. A failed
required check makes stager check fail (exit 1), which keeps
boot-complete.target, and so stager confirm, from being reached; a failed
wanted check is only a warning. On a slot on trial the verdict is recorded in
META (stager status shows it), and with --reboot a failed required check
reboots, so that the trial's boot counting brings the previous slot back
after its tries. Run it from contrib/stagehand-check.service.`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	flags := addFlowFlags(cmd)
	cmd.Flags().StringArrayVar(&dirs, "dir", nil, "a directory holding required.d and wanted.d, lowest precedence first; repeat it (default: "+strings.Join(health.DefaultDirs, ", ")+")")
	cmd.Flags().DurationVar(&timeout, "timeout", health.DefaultTimeout, "the time each check gets")
	cmd.Flags().BoolVar(&reboot, "reboot", false, "reboot when a required check fails on a slot on trial")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if timeout <= 0 {
			return cli.Usage("--timeout %s: want a positive duration such as 30s", timeout)
		}
		out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
		opts := health.Options{Dirs: dirs, Timeout: timeout}
		if !asJSON {
			opts.Logf = func(f string, a ...any) { fmt.Fprintf(out, f+"\n", a...) }
		}
		rep, err := health.Run(cmd.Context(), opts)
		if err != nil {
			return err
		}
		for _, x := range rep.Failed(health.Required) {
			fmt.Fprintf(errw, "required check %s (%s) failed after %s:\n%s\n", x.Name, x.Path, x.Duration.Round(time.Millisecond), indent(x.Output))
		}
		for _, x := range rep.Failed(health.Wanted) {
			fmt.Fprintf(errw, "warning: wanted check %s\n", x.Describe())
		}
		outcome := recordChecks(cmd, flags, rep)
		if asJSON {
			if err := cli.WriteJSON(out, rep); err != nil {
				return err
			}
		}
		if rep.Healthy() {
			if !asJSON {
				fmt.Fprintln(out, rep.Summary())
			}
			return nil
		}
		if reboot && outcome.Trial {
			fmt.Fprintf(errw, "the trial slot is not healthy: rebooting (%d tries left; then the previous slot boots)\n", outcome.TriesLeft)
			if err := rebootSystem(cmd); err != nil {
				return err
			}
		} else if reboot {
			fmt.Fprintln(errw, "not rebooting: this slot is not on trial, and rebooting it would not bring another back")
		}
		return fmt.Errorf("not healthy: %s", rep.Summary())
	}
	return cmd
}

// recordChecks records the verdict in META when this system runs a slot on
// trial; a system not booted from a slot, or a META it cannot write, is
// only warned about: the checks' verdict stands.
func recordChecks(cmd *cobra.Command, flags *flowFlags, rep *health.Report) *apply.CheckOutcome {
	dk, err := flags.open(cmd.Context())
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: not recording the checks in META: %v\n", err)
		return &apply.CheckOutcome{}
	}
	defer dk.Close()
	o, err := apply.RecordChecks(cmd.Context(), &dk.Env, rep.Healthy(), rep.Summary())
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", err)
		return &apply.CheckOutcome{}
	}
	return o
}

// indent indents each line of s for the error output.
func indent(s string) string {
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
