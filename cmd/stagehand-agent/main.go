// Command stagehand-agent is stagehand's Kubernetes agent: one node's step
// of a fleet rollout (node upgrade, wait, resume), the etcd guard, and the
// rollout's status. It runs in the stagehand-agent image, as a
// system-upgrade-controller Job, a DaemonSet or by hand; the node's own
// stager links none of its Kubernetes and etcd code.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"
)

// Exit codes beyond 0 (done), 1 (failed) and 2 (bad usage), for the Job's
// controller and for scripts.
const (
	exitRolledBack = 3 // this node rolled back: the rollout is stopped
	exitHeld       = 4 // another node holds the fleet lock: run again later
	exitStopped    = 5 // the rollout is stopped (by a rollback): nothing done
)

// exitCodes is what --help says of them.
const exitCodes = `Exit codes: 0 done, 1 failed, 2 bad usage, 3 this node rolled back (the
rollout is now stopped), 4 another node holds the fleet lock (nothing done:
run again later), 5 the rollout is stopped (nothing done until
stagehand-agent node resume).`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns its exit code; errors are printed
// as one line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Execute(ctx, newRoot(), args, stdout, stderr)
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "stagehand-agent",
		Short: "Roll stagehand upgrades out across a Kubernetes cluster",
		Long: `stagehand-agent upgrades the nodes of a Kubernetes cluster that run
stagehand: each node's step of a rollout (node upgrade) behind a fleet lock
of Leases, a drain that honours PodDisruptionBudgets and, on control-plane
nodes, the etcd guard; the rollout stops when a node rolls back.

  node upgrade    this node's next step (system-upgrade-controller's Job)
  node wait       wait until other nodes run a version (the workers' prepare step)
  node resume     start a rollout again that a rollback stopped
  rollout status  who holds the lock, whether the rollout is stopped, each node
  guard etcd      refuse when taking this node's etcd member down risks quorum

` + exitCodes,
		Args: cli.UnknownCommand,
	}
	root.AddCommand(newNodeCmd(), newGuardCmd(), newRolloutCmd())
	return root
}
