package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/fleet/kubetest"
)

// TestGuardEtcd runs stagehand-agent guard etcd against a real 3-member etcd:
// allowed, then the lock cycle, then refused with one line and exit 1.
func TestGuardEtcd(t *testing.T) {
	e := kubetest.StartEtcd(t, 3)
	eps := strings.Join(e.Endpoints(), ",")
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  string // in stdout, or in the one line of stderr when code != 0
	}{
		{"allowed", []string{"--etcd-member", "m0"}, 0, "allowed: m0 may go down (2 healthy of 3 voters left, quorum 2)"},
		{"lock", []string{"--etcd-member", "m0", "--lock", "--holder", "cp-0"}, 0, "the upgrade lock is held by cp-0"},
		{"lock held", []string{"--etcd-member", "m1", "--lock", "--holder", "cp-1"}, 1, "stagehand-agent: etcd at " + eps + ": etcd upgrade lock held by cp-0 since"},
		{"release", []string{"--etcd-member", "m0", "--release", "--holder", "cp-0"}, 0, "released"},
		{"lock again", []string{"--etcd-member", "m1", "--lock", "--holder", "cp-1"}, 0, "held by cp-1"},
		{"both flags", []string{"--lock", "--release"}, 2, "stagehand-agent: --lock and --release exclude each other"},
		{"no such member", []string{"--etcd-member", "cp-9"}, 1, `stagehand-agent: etcd guard refused: no etcd member is named "cp-9"`},
		{"unreachable", []string{"--etcd-endpoints", "http://127.0.0.1:1", "--etcd-read-timeout", "1s"}, 1, "stagehand-agent: etcd at http://127.0.0.1:1: no answer within 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"guard", "etcd", "--etcd-read-timeout", "3s"}, tc.args...)
			if !strings.Contains(strings.Join(args, " "), "--etcd-endpoints") {
				args = append(args, "--etcd-endpoints", eps)
			}
			code := run(context.Background(), args, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, &stdout, &stderr)
			}
			got := stdout.String()
			if code != 0 {
				got = stderr.String()
				if strings.Count(got, "\n") != 1 {
					t.Errorf("stderr is not one line: %q", got)
				}
			}
			if !strings.Contains(got, tc.out) {
				t.Errorf("got %q, want %q in it", got, tc.out)
			}
		})
	}
}
