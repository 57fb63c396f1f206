package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes every command shares; commands add their own from 3 up
// through ExitError.
const (
	ExitFailed = 1 // the command failed
	ExitUsage  = 2 // bad command-line input
)

// UsageError marks bad command-line input (exit code 2).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Usage returns a UsageError saying what is wrong.
func Usage(format string, args ...any) error {
	return UsageError{fmt.Errorf(format, args...)}
}

// ExitError carries an exit code of its own.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string { return e.Err.Error() }
func (e ExitError) Unwrap() error { return e.Err }

// Execute runs root with args and returns the exit code: 0 on success, 1
// when the command failed, 2 on bad usage, an ExitError's code. An error
// is printed to stderr as one line, prefixed with root's name.
func Execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return UsageError{fmt.Errorf("%w (see --help)", err)}
	})
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
	fmt.Fprintf(stderr, "%s: %s\n", root.Name(), msg)
	var ue UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	var ee ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitFailed
}

// UnknownCommand refuses arguments to a command that takes none, as an
// unknown subcommand, suggesting the nearest one.
func UnknownCommand(cmd *cobra.Command, args []string) error {
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
	return Usage("unknown command %q for %q%s (see %s --help)", args[0], cmd.CommandPath(), hint, cmd.CommandPath())
}

// GroupOnly makes cmd, a command that only groups subcommands, answer an
// unknown subcommand with a usage error that suggests the nearest one.
func GroupOnly(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.FParseErrWhitelist.UnknownFlags = true
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := UnknownCommand(cmd, args); err != nil {
			return err
		}
		return cmd.Help()
	}
	return cmd
}

// ExactArgs is cobra.ExactArgs with a usage error that says what is missing.
func ExactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return Usage("%s takes %s (got %d arguments; see --help)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}
