package main

import (
	"fmt"
	"path/filepath"
)

// fleetFigures: the fleet agent's own cost on a node with 50 pods against
// kubectl's bare drain of them, and how a rollout's wall time grows with
// the nodes (go test -bench ./fleet: a real kube-apiserver and etcd, the
// nodes' disks rebooted through the real early-boot flow).
func (b *bench) fleetFigures() {
	n := min(*hostRuns, 3) // a rollout of 6 nodes takes about 20 s
	logPath := filepath.Join(b.out, "go-bench-fleet.json")
	b.report.Logs["go test -bench ./fleet"] = logPath
	t0 := b.now()
	b.logf("host: go test -bench ./fleet (agent against the bare drain, rollouts of 3 and 6 nodes), %d runs each", n)
	m, err := goBench(b.root, "./fleet", "^(BenchmarkAgentVsDrain|BenchmarkRollout)$", n, logPath)
	errs := ""
	if err != nil {
		errs = err.Error()
		b.logf("%v", err)
	}
	load := b.watch.during(t0, b.now())

	av := m["BenchmarkAgentVsDrain"]
	f := &Figure{ID: "fleet-agent", Name: "stagehand-agent node upgrade up to the reboot on a node with 50 pods, its staging apart (lock, node reads and records, events, cordon, drain)",
		Budget: "≤ 1.5× the bare drain", Load: load}
	f.Measured = av.get("agent-s", n)
	base := av.get("drain-s", n)
	base.Label = "kubectl's drain library: cordon and drain of the same 50 pods"
	f.Baseline = &base
	r := av.get("agent/drain", n)
	r.Unit, r.Label = "×", "agent time / drain time"
	f.Ratio = &r
	f.Pass = r.Runs > 0 && r.Value <= 1.5
	if c, d := av.get("agent-calls", n), av.get("drain-calls", n); c.Runs > 0 {
		f.Note = fmt.Sprintf("API requests: %.0f for the agent, %.0f for the bare drain", c.Value, d.Value)
	}
	b.add(f, errs)

	r3, r6 := m["BenchmarkRollout/nodes=3"].get("s/node", n), m["BenchmarkRollout/nodes=6"].get("s/node", n)
	t3, t6 := m["BenchmarkRollout/nodes=3"].get("rollout-s", n), m["BenchmarkRollout/nodes=6"].get("rollout-s", n)
	t6.Unit = "s"
	f = &Figure{ID: "fleet-rollout", Name: "wall time of a rollout of 6 worker nodes one at a time (drain of 2 pods each under a budget, stage, reboot through the early-boot flow, confirm, Ready, uncordon)",
		Measured: t6, Budget: "linear: time per node at 6 nodes ≤ 1.5× that at 3", Load: load}
	if r3.Runs > 0 && r6.Runs > 0 {
		ratio := Measure{Label: "s/node at 6 / at 3", Value: r6.Value / r3.Value, Min: r6.Value / r3.Value, Max: r6.Value / r3.Value, Unit: "×", Runs: n}
		f.Ratio = &ratio
		f.Pass = ratio.Value <= 1.5
		f.Note = fmt.Sprintf("3 nodes: %.1f s (%.2f s/node); 6 nodes: %.1f s (%.2f s/node)", t3.Value, r3.Value, t6.Value, r6.Value)
	}
	b.add(f, errs)
}
