package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/internal/cli"
	"github.com/stagehand-dev/stagehand/internal/reboot"
	"github.com/stagehand-dev/stagehand/stage"
)

// machine is how the agent reboots the node, given --host-root; tests
// replace it to record the reboot instead.
var machine = func(hostRoot string) reboot.Machine { return reboot.Machine{HostRoot: hostRoot} }

func newNodeUpgradeCmd() *cobra.Command {
	var a fleet.Agent
	var node, hostRoot string
	var noGuard bool
	var every time.Duration
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

While another node holds the lock it changes nothing and exits 4; while the
rollout is stopped, 5 (stagehand-agent node resume starts it again).
With --reboot-sentinel it takes no lock and neither drains nor reboots: it
stages and writes kured's sentinel, and kured's lock decides the reboots.
The fleet lock is held across the reboot by the node's name, and taken over
by another node only when not renewed for --lock-ttl.

It runs as root on the node: it writes the disk's META and STAGE partitions
and reboots the host. In a container, --host-root names the host's root
(system-upgrade-controller mounts it at /host): the reboot goes through the
host's systemd or reboot command, run chrooted there; a host with neither is
refused before anything changes. Without --disk the disk is the one the host
booted from: its efivarfs and /dev mounted in the pod at their usual places,
else those under --host-root.

` + exitCodes,
		Example: `  stagehand-agent node upgrade --image registry.example/os:v2
  stagehand-agent node upgrade --image registry.example/os:v2 --max-unavailable 2 --drain-timeout 15m
  stagehand-agent node upgrade --image registry.example/os:v2 --etcd-endpoints https://10.0.0.2:2379 \
      --etcd-ca /etc/kubernetes/pki/etcd/ca.crt --etcd-cert hc.crt --etcd-key hc.key`,
		Args: cli.ExactArgs(0, "no arguments"),
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
	cmd.Flags().StringVar(&hostRoot, "host-root", "", "the host's root inside a container (SUC mounts it at /host): reboot through its init system, find its boot disk")
	cmd.Flags().BoolVar(&noGuard, "no-etcd-guard", false, "upgrade a control-plane node without the etcd guard")
	cmd.Flags().StringVar(&a.Sentinel, "reboot-sentinel", "", "only stage and write this file (kured's /var/run/reboot-required): kured drains and reboots")
	cmd.Flags().DurationVar(&every, "every", 0, "run again every this long until stopped, printing each run's error (a DaemonSet's loop: the image has no shell)")
	etcd := addEtcdFlags(cmd)
	diskPath := cli.AddDiskFlag(cmd, func() (string, error) { return bootDisk(hostRoot) })
	trust := cli.AddTrustFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if a.Stage.Image == "" {
			return cli.Usage("--image is required: the installer image to upgrade to")
		}
		if v := os.Getenv("SYSTEM_UPGRADE_PLAN_LATEST_VERSION"); v != "" && !strings.ContainsAny(lastPart(a.Stage.Image), ":@") {
			a.Stage.Image += ":" + v
		}
		if _, err := stage.ParseSource(a.Stage.Image, a.Stage.Insecure); err != nil {
			return cli.UsageError{Err: err}
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
		m := machine(hostRoot)
		a.Reboot = func(ctx context.Context) error { return m.Reboot(ctx, cli.Logf(cmd)) }
		a.CanReboot = func() error { _, err := m.Find(); return err }
		if err := checkGuard(cmd, &a, noGuard); err != nil {
			return err
		}
		if every <= 0 {
			return upgradeOnce(cmd, &a)
		}
		for {
			if err := upgradeOnce(cmd, &a); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", cmd.Root().Name(), strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			select {
			case <-cmd.Context().Done():
				return cmd.Context().Err()
			case <-time.After(every):
			}
		}
	}
	return cmd
}

// upgradeOnce runs the agent's step once and says what it did.
func upgradeOnce(cmd *cobra.Command, a *fleet.Agent) error {
	res, err := a.Run(cmd.Context())
	switch {
	case errors.Is(err, fleet.ErrRolledBack):
		return cli.ExitError{Code: exitRolledBack, Err: err}
	case errors.Is(err, fleet.ErrHeld):
		return cli.ExitError{Code: exitHeld, Err: err}
	case errors.Is(err, fleet.ErrStopped):
		return cli.ExitError{Code: exitStopped, Err: err}
	case err != nil:
		return err
	}
	where := "for" // the slot the target goes to
	if res.Outcome == fleet.Upgraded {
		where = "on" // the slot that runs it
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: node %s, %s (%s) %s slot %s\n", res.Outcome, a.Node, cmp.Or(res.Version, a.Stage.Image), res.Digest, where, res.Slot)
	return nil
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
	return cli.Usage("node %s is a control-plane node: pass --etcd-endpoints (and --etcd-ca/--etcd-cert/--etcd-key) for the etcd guard, or --no-etcd-guard", a.Node)
}

func lastPart(ref string) string {
	return ref[strings.LastIndex(ref, "/")+1:]
}
