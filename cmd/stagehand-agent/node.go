package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/internal/cli"
)

func newNodeCmd() *cobra.Command {
	g := cli.GroupOnly(&cobra.Command{Use: "node", Short: "Upgrade this Kubernetes node as one step of a fleet rollout"})
	g.AddCommand(newNodeUpgradeCmd(), newNodeResumeCmd(), newNodeWaitCmd())
	return g
}

// kubeFlags adds --kubeconfig, and the fleet lock's flags when lock is
// set, and returns the client maker.
func kubeFlags(cmd *cobra.Command, lock *fleet.Lock) func() (kubernetes.Interface, error) {
	var kubeconfig string
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: the pod's service account in a cluster, else $KUBECONFIG or ~/.kube/config)")
	if lock != nil {
		cmd.Flags().StringVar(&lock.Namespace, "namespace", fleet.DefaultNamespace, "namespace of the fleet lock's Leases")
		cmd.Flags().StringVar(&lock.Name, "lock-name", fleet.DefaultLeaseName, "name of the fleet lock's Leases (NAME-0, NAME-1, …)")
	}
	return func() (kubernetes.Interface, error) {
		var cfg *rest.Config
		var err error
		if kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
			cfg, err = rest.InClusterConfig()
		} else {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			rules.ExplicitPath = kubeconfig
			cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
		}
		if err != nil {
			return nil, cli.Usage("kubernetes client configuration: %v (pass --kubeconfig)", err)
		}
		cfg.UserAgent = "stagehand-agent"
		cfg.Timeout = 30 * time.Second
		return kubernetes.NewForConfig(cfg)
	}
}

func nodeName(flag string) string {
	for _, v := range []string{flag, os.Getenv("SYSTEM_UPGRADE_NODE_NAME"), os.Getenv("NODE_NAME")} {
		if v != "" {
			return v
		}
	}
	h, _ := os.Hostname()
	return h
}

func newNodeResumeCmd() *cobra.Command {
	var l fleet.Lock
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Start a rollout again that a rollback stopped",
		Long: `Clear the stop a node's rollback put on the fleet lock, so that the next
stagehand-agent node upgrade of every node goes on. Look at why it rolled back
first: stagehand-agent rollout status, the node's stagehand.dev/reason
annotation, its RolledBack event, and stager status on it.`,
		Example: `  stagehand-agent rollout status
  stagehand-agent node resume`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	newClient := kubeFlags(cmd, &l)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var err error
		if l.Client, err = newClient(); err != nil {
			return err
		}
		s, err := l.Resume(cmd.Context())
		if err != nil {
			return err
		}
		if s == nil {
			fmt.Fprintln(cmd.OutOrStdout(), "the rollout is not stopped: nothing to do")
			return nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "resumed the rollout stopped at %s by node %s: %s\n", s.Time.Format(time.RFC3339), s.Node, s.Reason)
		return nil
	}
	return cmd
}

func newNodeWaitCmd() *cobra.Command {
	var selector, version string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait --selector SELECTOR",
		Short: "Wait until the nodes SELECTOR matches run a version, confirmed",
		Long: `Wait until every node the label selector matches runs --version (default
$SYSTEM_UPGRADE_PLAN_LATEST_VERSION), confirmed, Ready and with nothing of an
upgrade left on it, as their stagehand.dev/ labels say: the prepare step of
the workers' Plan, so that they start after the control plane.

Exit codes: 0 they do, 1 failed (or --timeout passed), 2 bad usage, 3 one
of them rolled back (the wait ends at once).`,
		Example: `  stagehand-agent node wait --selector node-role.kubernetes.io/control-plane --version v2`,
		Args:    cli.ExactArgs(0, "no arguments"),
	}
	newClient := kubeFlags(cmd, nil)
	cmd.Flags().StringVar(&selector, "selector", "", "label selector of the nodes to wait for")
	cmd.Flags().StringVar(&version, "version", os.Getenv("SYSTEM_UPGRADE_PLAN_LATEST_VERSION"), "the version they must run")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Hour, "give up after this long")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if selector == "" || version == "" {
			return cli.Usage("--selector and --version (or $SYSTEM_UPGRADE_PLAN_LATEST_VERSION) are required")
		}
		cs, err := newClient()
		if err != nil {
			return err
		}
		err = fleet.WaitNodes(cmd.Context(), cs, selector, version, 5*time.Second, timeout)
		if errors.Is(err, fleet.ErrRolledBack) {
			return cli.ExitError{Code: exitRolledBack, Err: err}
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "every node %q runs %s\n", selector, version)
		return nil
	}
	return cmd
}
