package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestMovedToAgent: stager node and stager guard moved to stagehand-agent;
// typed anyway, they say so in one line and exit 2.
func TestMovedToAgent(t *testing.T) {
	for _, args := range [][]string{
		{"node", "upgrade", "--image", "registry.example/os:v2"},
		{"node", "resume"},
		{"guard", "etcd", "--lock"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		want := "stager: `stager " + args[0] + "` moved to the Kubernetes agent: run `stagehand-agent " + args[0] + "`"
		if code != 2 || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 || !strings.HasPrefix(stderr.String(), want) {
			t.Errorf("stager %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, &stdout, &stderr)
		}
	}
	var help bytes.Buffer
	if run(context.Background(), []string{"--help"}, &help, &help); strings.Contains(help.String(), "  node ") || strings.Contains(help.String(), "  guard ") {
		t.Errorf("stager --help lists the moved commands:\n%s", &help)
	}
}
