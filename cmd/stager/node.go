package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/stage"
)

// Exit codes of stager node upgrade beyond 0, 1 and 2.
const (
	exitRolledBack = 3 // this node rolled back: the rollout is stopped
	exitWait       = 4 // another node holds the lock, or the rollout is stopped
)

// exitError carries an exit code of its own.
type exitError struct {
	code int
	error
}

func (e exitError) Unwrap() error { return e.error }

func newNodeCmd() *cobra.Command {
	g := groupOnly(&cobra.Command{Use: "node", Short: "Upgrade this Kubernetes node as one step of a fleet rollout"})
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
			return nil, usageError{fmt.Errorf("kubernetes client configuration: %v (pass --kubeconfig)", err)}
		}
		cfg.UserAgent = "stagehand"
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

func newNodeUpgradeCmd() *cobra.Command {
	var a fleet.Agent
	var node, hostRoot string
	var noGuard bool
	cmd := &cobra.Command{
		Use:   "upgrade --image REF",
		Short: "Do this node's next step of the upgrade to REF (run it again after the reboot)",
		Long: `Upgrade this node to REF as one step of a rollout, as system-upgrade-controller's
Job, a DaemonSet or a person runs it. Each run reads META and the Node and does
the next step only, so it may be run any number of times:

  nothing of REF yet   take the fleet lock (a Lease; --max-unavailable of them),
                       on a control-plane node the etcd guard and its lock,
                       cordon, drain (PodDisruptionBudgets honoured), stage,
                       reboot; exit 0 ("rebooting")
  REF on trial         wait (--confirm-timeout) for its health checks to confirm it
  REF confirmed        wait for Ready in a new boot (--ready-timeout), uncordon,
                       release the locks; exit 0 ("upgraded")
  REF rolled back      annotate the node (stagehand.dev/rolled-back-from), emit a
                       Warning event, uncordon, stop the rollout; exit 3

While the rollout is stopped, or another node holds the lock, it changes
nothing and exits 4. stager node resume starts a stopped rollout again.
With --reboot-sentinel it takes no lock and neither drains nor reboots: it
stages and writes kured's sentinel, and kured's lock decides the reboots.
The fleet lock is held across the reboot by the node's name, and taken over
by another node only when not renewed for --lock-ttl.`,
		Example: `  stager node upgrade --image registry.example/os:v2
  stager node upgrade --image registry.example/os:v2 --max-unavailable 2 --drain-timeout 15m
  stager node upgrade --image registry.example/os:v2 --etcd-endpoints https://10.0.0.2:2379 \
      --etcd-ca /etc/kubernetes/pki/etcd/ca.crt --etcd-cert hc.crt --etcd-key hc.key`,
		Args: exactArgs(0, "no arguments"),
	}
	newClient := kubeFlags(cmd, &a.Lock)
	cmd.Flags().IntVar(&a.Lock.Slots, "max-unavailable", 1, "nodes of the fleet that may upgrade at once (Leases in the lock)")
	cmd.Flags().StringVar(&a.Stage.Image, "image", "", "installer image to upgrade to (without a tag: $SYSTEM_UPGRADE_PLAN_LATEST_VERSION is the tag)")
	cmd.Flags().BoolVar(&a.Stage.Insecure, "insecure", false, "talk plain HTTP to the registry")
	cmd.Flags().StringVar(&node, "node", "", "this node's name (default: $SYSTEM_UPGRADE_NODE_NAME, $NODE_NAME, the host name)")
	cmd.Flags().DurationVar(&a.Lock.TTL, "lock-ttl", fleet.DefaultLockTTL, "another node takes the lock over when its holder has not renewed it this long")
	cmd.Flags().DurationVar(&a.Drain.Timeout, "drain-timeout", fleet.DefaultDrainTimeout, "give the drain up after this long")
	cmd.Flags().BoolVar(&a.Drain.Force, "force", false, "also delete pods that no controller manages")
	cmd.Flags().DurationVar(&a.ConfirmTimeout, "confirm-timeout", fleet.DefaultConfirmTimeout, "wait this long for a trial's confirm")
	cmd.Flags().DurationVar(&a.ReadyTimeout, "ready-timeout", fleet.DefaultReadyTimeout, "wait this long for Ready (and etcd) after the reboot")
	cmd.Flags().StringVar(&hostRoot, "host-root", "", "the host's root inside a container (SUC mounts it at /host): reboot through its systemd")
	cmd.Flags().BoolVar(&noGuard, "no-etcd-guard", false, "upgrade a control-plane node without the etcd guard")
	cmd.Flags().StringVar(&a.Sentinel, "reboot-sentinel", "", "only stage and write this file (kured's /var/run/reboot-required): kured drains and reboots")
	etcd := addEtcdFlags(cmd)
	diskPath := addDiskFlag(cmd)
	trust := addTrustFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if a.Stage.Image == "" {
			return usageError{errors.New("--image is required: the installer image to upgrade to")}
		}
		if v := os.Getenv("SYSTEM_UPGRADE_PLAN_LATEST_VERSION"); v != "" && !strings.ContainsAny(lastPart(a.Stage.Image), ":@") {
			a.Stage.Image += ":" + v
		}
		if _, err := stage.ParseSource(a.Stage.Image, a.Stage.Insecure); err != nil {
			return usageError{err}
		}
		var err error
		if a.Stage.VerifyKeys, a.Stage.Policy, err = trust(); err != nil {
			return err
		}
		if a.Stage.Disk, err = diskPath(); err != nil {
			return err
		}
		if a.Client, err = newClient(); err != nil {
			return err
		}
		a.Node = nodeName(node)
		if !noGuard && cmd.Flags().Changed("etcd-endpoints") {
			if !cmd.Flags().Changed("etcd-member") {
				etcd.Member = a.Node
			}
			a.Etcd = etcd
		}
		a.Log = cmd.ErrOrStderr()
		r := hostRebooter
		if hostRoot != "" {
			r.systemdDir = filepath.Join(hostRoot, "run/systemd/system")
			inner := r.run
			r.run = func(ctx context.Context, name string, args ...string) ([]byte, error) {
				return inner(ctx, "chroot", append([]string{hostRoot, name}, args...)...)
			}
		}
		a.Reboot = func(ctx context.Context) error { return r.reboot(ctx, cmd.ErrOrStderr()) }
		if err := checkGuard(cmd, &a, noGuard); err != nil {
			return err
		}
		res, err := a.Run(cmd.Context())
		switch {
		case errors.Is(err, fleet.ErrRolledBack):
			return exitError{exitRolledBack, err}
		case errors.Is(err, fleet.ErrHeld), errors.Is(err, fleet.ErrStopped):
			return exitError{exitWait, err}
		case err != nil:
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: node %s, %s (%s) on slot %s\n", res.Outcome, a.Node, cmp.Or(res.Version, a.Stage.Image), res.Digest, res.Slot)
		return nil
	}
	return cmd
}

// checkGuard refuses a control-plane node without the etcd guard, unless
// told to go without it.
func checkGuard(cmd *cobra.Command, a *fleet.Agent, noGuard bool) error {
	if a.Etcd != nil || noGuard {
		return nil
	}
	cp, err := fleet.IsControlPlane(cmd.Context(), a.Client, a.Node)
	if err != nil || !cp {
		return err
	}
	return usageError{fmt.Errorf("node %s is a control-plane node: pass --etcd-endpoints (and --etcd-ca/--etcd-cert/--etcd-key) for the etcd guard, or --no-etcd-guard", a.Node)}
}

func lastPart(ref string) string {
	return ref[strings.LastIndex(ref, "/")+1:]
}

func newNodeResumeCmd() *cobra.Command {
	var l fleet.Lock
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Start a rollout again that a rollback stopped",
		Long: `Clear the stop a node's rollback put on the fleet lock, so that the next
stager node upgrade of every node goes on. Look at why it rolled back first:
the node's stagehand.dev/reason annotation, its RolledBack event, and stager
status on it.`,
		Example: `  kubectl describe node w-2 | grep -A3 stagehand.dev
  stager node resume`,
		Args: exactArgs(0, "no arguments"),
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
the workers' Plan, so that they start after the control plane. A node that
rolled back ends the wait at once (exit 3).`,
		Example: `  stager node wait --selector node-role.kubernetes.io/control-plane --version v2`,
		Args:    exactArgs(0, "no arguments"),
	}
	newClient := kubeFlags(cmd, nil)
	cmd.Flags().StringVar(&selector, "selector", "", "label selector of the nodes to wait for")
	cmd.Flags().StringVar(&version, "version", os.Getenv("SYSTEM_UPGRADE_PLAN_LATEST_VERSION"), "the version they must run")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Hour, "give up after this long")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if selector == "" || version == "" {
			return usageError{errors.New("--selector and --version (or $SYSTEM_UPGRADE_PLAN_LATEST_VERSION) are required")}
		}
		cs, err := newClient()
		if err != nil {
			return err
		}
		err = fleet.WaitNodes(cmd.Context(), cs, selector, version, 5*time.Second, timeout)
		if errors.Is(err, fleet.ErrRolledBack) {
			return exitError{exitRolledBack, err}
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "every node %q runs %s\n", selector, version)
		return nil
	}
	return cmd
}
