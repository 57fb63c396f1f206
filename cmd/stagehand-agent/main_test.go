package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestExitCodesInHelp: the commands whose exit codes a Job's controller or
// a script acts on say them in --help.
func TestExitCodesInHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"3 this node rolled back", "4 another node holds the fleet lock", "5 the rollout is stopped"}},
		{[]string{"node", "upgrade", "--help"}, []string{"3 this node rolled back", "4 another node holds the fleet lock", "5 the rollout is stopped"}},
		{[]string{"node", "wait", "--help"}, []string{"3 one\nof them rolled back"}},
		{[]string{"guard", "etcd", "--help"}, []string{"1 refused or failed"}},
		{[]string{"rollout", "status", "--help"}, []string{"0 printed"}},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != 0 {
			t.Fatalf("%v: exit %d", tc.args, code)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%v does not say %q:\n%s", tc.args, w, &out)
			}
		}
	}
	if exitRolledBack == exitHeld || exitHeld == exitStopped {
		t.Error("exit codes not distinct")
	}
}
