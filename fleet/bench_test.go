package fleet_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
	"github.com/stagehand-dev/stagehand/stage"
)

type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// countingClient is the agent's client, counting its API requests.
func (c *cluster) countingClient(n *atomic.Int64) *kubernetes.Clientset {
	cfg := c.api.Config(kubetest.AgentToken)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, n} }
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

// BenchmarkAgentVsDrain: the agent's run up to the reboot on a node with 50
// pods, its staging apart, against the bare cordon and drain of kubectl's
// library on the same pods, in the same process; and the API requests of
// each. No budget holds them: a refused eviction is retried after a fixed
// second, which would swamp the agent's own cost.
func BenchmarkAgentVsDrain(b *testing.B) {
	c := newCluster(b, 0, 2, "v2")
	ctx := context.Background()
	n := c.nodes[0]
	var agentS, drainS, agentCalls, drainCalls float64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		kubetest.AddPods(b, c.cs, "bench", fmt.Sprintf("bare-%d", i), repeat("w-0", 50), -1)
		var calls atomic.Int64
		d := fleet.Drainer{Client: c.countingClient(&calls), Timeout: time.Minute}
		b.StartTimer()
		start := time.Now()
		if err := d.Cordon(ctx, c.getNode("w-0"), true); err != nil {
			b.Fatal(err)
		}
		if err := d.Drain(ctx, "w-0"); err != nil {
			b.Fatal(err)
		}
		drainS += time.Since(start).Seconds()
		drainCalls += float64(calls.Load())
		b.StopTimer()
		if err := d.Cordon(ctx, c.getNode("w-0"), false); err != nil {
			b.Fatal(err)
		}

		kubetest.AddPods(b, c.cs, "bench", fmt.Sprintf("agent-%d", i), repeat("w-0", 50), -1)
		calls.Store(0)
		a := c.agent(n, "v2")
		a.Client, a.Log = c.countingClient(&calls), nil
		b.StartTimer()
		start = time.Now()
		res, err := a.Run(ctx)
		if err != nil || !n.reboot {
			b.Fatalf("%+v, %v", res, err)
		}
		agentS += (time.Since(start) - res.Staging).Seconds()
		agentCalls += float64(calls.Load())
		b.StopTimer()
		// Back to the start: nothing staged, uncordoned, lock free.
		if _, err := stage.Cancel(ctx, n.m.Img, time.Now()); err != nil {
			b.Fatal(err)
		}
		if err := (&fleet.Lock{Client: c.cs, Holder: n.name}).Release(ctx); err != nil {
			b.Fatal(err)
		}
		if err := d.Cordon(ctx, c.getNode("w-0"), false); err != nil {
			b.Fatal(err)
		}
		patch := `{"metadata":{"annotations":{"stagehand.dev/cordoned":null,"stagehand.dev/target":null,"stagehand.dev/target-digest":null,"stagehand.dev/boot-id":null}}}`
		if _, err := c.cs.CoreV1().Nodes().Patch(ctx, "w-0", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	runs := float64(b.N)
	b.ReportMetric(agentS/runs, "agent-s")
	b.ReportMetric(drainS/runs, "drain-s")
	b.ReportMetric(agentS/drainS, "agent/drain")
	b.ReportMetric(agentCalls/runs, "agent-calls")
	b.ReportMetric(drainCalls/runs, "drain-calls")
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// BenchmarkRollout: the wall time of a rollout of N worker nodes one at a
// time (each: lock, cordon, drain of its pods, stage, reboot through the
// real early-boot flow, confirm, Ready, uncordon, release).
func BenchmarkRollout(b *testing.B) {
	for _, nodes := range []int{3, 6} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			var total float64
			for b.Loop() {
				b.StopTimer()
				c := newCluster(b, 0, nodes, "v2")
				kubetest.AddPods(b, c.cs, "shop", "web", append(c.workers(), c.workers()...), nodes)
				b.StartTimer()
				start := time.Now()
				for _, n := range c.nodes {
					if _, err := c.job(n, "v2"); err != nil {
						b.Fatal(err)
					}
				}
				total += time.Since(start).Seconds()
			}
			b.ReportMetric(total/float64(b.N), "rollout-s")
			b.ReportMetric(total/float64(b.N)/float64(nodes), "s/node")
		})
	}
}
