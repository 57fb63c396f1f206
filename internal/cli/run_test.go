package cli

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/spf13/cobra"
)

// TestExecute: each kind of error maps to its exit code and one line on
// stderr, prefixed with the binary's name.
func TestExecute(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		args []string
		code int
		want string
	}{
		{"ok", nil, nil, 0, ""},
		{"failed", errors.New("disk gone\nreally"), nil, 1, "tool: disk gone; really\n"},
		{"usage", Usage("--x is required"), nil, 2, "tool: --x is required\n"},
		{"bad flag", nil, []string{"--nope"}, 2, "tool: unknown flag: --nope (see --help)\n"},
		{"own code", ExitError{Code: 5, Err: errors.New("stopped")}, nil, 5, "tool: stopped\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := &cobra.Command{Use: "tool", Args: ExactArgs(0, "no arguments"), RunE: func(*cobra.Command, []string) error { return tc.err }}
			var out, errb bytes.Buffer
			if code := Execute(context.Background(), root, tc.args, &out, &errb); code != tc.code || errb.String() != tc.want {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, &errb, tc.code, tc.want)
			}
		})
	}
}
