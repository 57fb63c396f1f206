package main

import (
	"cmp"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/fleet/etcdguard"
	"github.com/stagehand-dev/stagehand/internal/cli"
)

func newGuardCmd() *cobra.Command {
	g := cli.GroupOnly(&cobra.Command{Use: "guard", Short: "Refuse an upgrade that would risk the cluster"})
	g.AddCommand(newGuardEtcdCmd())
	return g
}

// addEtcdFlags adds the etcd connection flags to cmd.
func addEtcdFlags(cmd *cobra.Command) *etcdguard.Options {
	o := &etcdguard.Options{}
	host, _ := os.Hostname()
	cmd.Flags().StringSliceVar(&o.Endpoints, "etcd-endpoints", []string{"https://127.0.0.1:2379"}, "etcd client URLs")
	cmd.Flags().StringVar(&o.CAFile, "etcd-ca", "", "CA certificate of etcd's client port (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)")
	cmd.Flags().StringVar(&o.CertFile, "etcd-cert", "", "client certificate (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt)")
	cmd.Flags().StringVar(&o.KeyFile, "etcd-key", "", "client key")
	cmd.Flags().StringVar(&o.Member, "etcd-member", host, "name of this node's etcd member")
	cmd.Flags().DurationVar(&o.ReadTimeout, "etcd-read-timeout", etcdguard.DefaultReadTimeout, "bound on the linearizable read through each member")
	return o
}

func newGuardEtcdCmd() *cobra.Command {
	var lock, release, asJSON bool
	var holder string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Refuse when taking this node's etcd member down would risk quorum",
		Long: `Check that this control-plane node's etcd member may go down for an upgrade:
refused for a 2-member cluster, a member not started, unhealthy (no
linearizable read through it within --etcd-read-timeout) or a learner, and
when the healthy voting members left would not keep quorum.

With --lock the check runs under the control-plane upgrade lock, kept in
etcd (one node at a time) until --release, which waits for the cluster to be
whole again; the lock lapses after --lock-ttl if its holder never comes back.
stagehand-agent node upgrade does all of this itself on control-plane nodes.

Exit codes: 0 allowed (or done), 1 refused or failed, 2 bad usage.`,
		Example: `  stagehand-agent guard etcd --etcd-endpoints https://10.0.0.2:2379 --etcd-ca ca.crt --etcd-cert c.crt --etcd-key c.key
  stagehand-agent guard etcd --lock --holder cp-1 && stager --image REF --reboot
  stagehand-agent guard etcd --release --holder cp-1`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	o := addEtcdFlags(cmd)
	cmd.Flags().BoolVar(&lock, "lock", false, "take the upgrade lock, then check")
	cmd.Flags().BoolVar(&release, "release", false, "release the upgrade lock once the cluster is healthy")
	cmd.Flags().StringVar(&holder, "holder", "", "lock holder identity (default: --etcd-member)")
	cmd.Flags().DurationVar(&ttl, "lock-ttl", etcdguard.DefaultLockTTL, "the lock lapses when its holder is gone this long")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if lock && release {
			return cli.Usage("--lock and --release exclude each other")
		}
		if holder == "" {
			holder = o.Member
		}
		o.Logf = cli.Logf(cmd)
		var r *etcdguard.Report
		var err error
		switch {
		case lock:
			r, err = etcdguard.Acquire(cmd.Context(), *o, holder, ttl)
		case release:
			r, err = etcdguard.Release(cmd.Context(), *o, holder)
		default:
			r, err = etcdguard.Check(cmd.Context(), *o)
		}
		if r != nil {
			if asJSON {
				if jerr := cli.WriteJSON(cmd.OutOrStdout(), r); jerr != nil {
					return jerr
				}
			} else {
				printGuard(cmd, r)
			}
		}
		if err != nil {
			return err
		}
		switch {
		case lock:
			fmt.Fprintf(cmd.OutOrStdout(), "allowed: %s may go down; the upgrade lock is held by %s\n", o.Member, holder)
		case release:
			fmt.Fprintf(cmd.OutOrStdout(), "released: the upgrade lock of %s (if it held it)\n", holder)
		default:
			fmt.Fprintf(cmd.OutOrStdout(), "allowed: %s may go down (%d healthy of %d voters left, quorum %d)\n", o.Member, r.HealthyAfter, r.Voters, r.Quorum)
		}
		return nil
	}
	return cmd
}

func printGuard(cmd *cobra.Command, r *etcdguard.Report) {
	if r == nil {
		return
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	for _, m := range r.Members {
		state := "healthy"
		switch {
		case m.Learner:
			state = "learner"
		case !m.Healthy:
			state = "unhealthy: " + m.Error
		}
		fmt.Fprintf(tw, "member %s\t%s\t%s\t%s\n", cmp.Or(m.Name, "-"), m.ID, strings.Join(m.URLs, ","), state)
	}
	tw.Flush()
}
