package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// TestRollbackStopsRollout: v3 does not come up on the first worker; the
// machine rolls back by itself, and the rollout stops there, on the node
// and in an Event, with a non-zero exit, until someone resumes it.
func TestRollbackStopsRollout(t *testing.T) {
	c := newCluster(t, 0, 3, "v2", "v3")
	ctx := context.Background()
	for _, n := range c.nodes {
		n.healthy = func(v string) bool { return v != "v3" }
	}
	w0, w1, w2 := c.nodes[0], c.nodes[1], c.nodes[2]
	_, err := c.job(w0, "v3")
	if !errors.Is(err, fleet.ErrRolledBack) {
		t.Fatalf("w-0: %v, want a rollback", err)
	}
	t.Logf("w-0 exits with: %v", err)
	for _, want := range []string{"w-0 rolled back from v3", "sha256:", "rollout is stopped"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	st := w0.m.Status()
	if w0.slot != meta.SlotA || st.Slots.Active != meta.SlotA || st.Slots.B.State != "bad" {
		t.Fatalf("w-0 runs %s: %+v", w0.slot, st.Slots)
	}
	k := c.getNode("w-0")
	if k.Annotations[fleet.AnnRolledBackFrom] != st.Slots.B.Digest || k.Labels[fleet.LabelPhase] != "rolled-back" || k.Labels[fleet.LabelVersion] != "v1" || k.Spec.Unschedulable {
		t.Errorf("w-0: labels %v annotations %v unschedulable %v", k.Labels, k.Annotations, k.Spec.Unschedulable)
	}
	if !strings.Contains(k.Annotations[fleet.AnnReason], "slot b") {
		t.Errorf("reason annotation %q", k.Annotations[fleet.AnnReason])
	}
	evs := c.events("w-0", "RolledBack")
	if len(evs) != 1 || evs[0].Type != "Warning" || !strings.Contains(evs[0].Message, "rolled back from v3") {
		t.Fatalf("events %+v", evs)
	}
	// The Job runs again (backoffLimit): the same answer, no second Event.
	if _, err := c.job(w0, "v3"); !errors.Is(err, fleet.ErrRolledBack) {
		t.Fatalf("w-0 again: %v", err)
	}
	if n := len(c.events("w-0", "RolledBack")); n != 1 {
		t.Errorf("%d RolledBack events after a rerun", n)
	}
	// The next nodes do not start.
	for _, n := range []*node{w1, w2} {
		_, err := c.job(n, "v3")
		if !errors.Is(err, fleet.ErrStopped) || !strings.Contains(err.Error(), "by node w-0") || !strings.Contains(err.Error(), "stagehand-agent node resume") {
			t.Fatalf("%s: %v, want the rollout stopped by w-0", n.name, err)
		}
		c.checkUntouched(n)
	}
	// Resumed with a fixed image, the rollout goes on.
	stop, err := c.lock(1).Resume(ctx)
	if err != nil || stop == nil || stop.Node != "w-0" {
		t.Fatalf("resume: %+v, %v", stop, err)
	}
	for _, n := range []*node{w1, w0} {
		if _, err := c.job(n, "v2"); err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		c.checkUpgraded(n, "v2")
	}
	if k := c.getNode("w-0"); k.Labels[fleet.LabelPhase] != "idle" {
		t.Errorf("w-0 phase %q after its upgrade to v2", k.Labels[fleet.LabelPhase])
	}
}

// TestRolledBackTagMoved: the target's tag moved, after a run read the
// digest it named, to a digest that rolled back on this node. Staging
// refuses it (stage.ErrRolledBack), and the agent stops the rollout as for
// any rollback (ErrRolledBack, exit 3), with META untouched and the node
// uncordoned, rather than fail a run the Job would repeat.
func TestRolledBackTagMoved(t *testing.T) {
	c := newCluster(t, 0, 1, "v2", "v3")
	ctx := context.Background()
	w0 := c.nodes[0]
	w0.healthy = func(v string) bool { return v != "v3" }
	if _, err := c.job(w0, "v3"); !errors.Is(err, fleet.ErrRolledBack) {
		t.Fatalf("%v, want a rollback", err)
	}
	if _, err := c.lock(1).Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// What a run records that resolved the tag before it moved back.
	old, err := stage.Resolve(ctx, stage.Options{Image: c.ref("v2"), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q,%q:%q}}}`, fleet.AnnTarget, c.ref("v3"), fleet.AnnTargetDigest, old)
	if _, err := c.cs.CoreV1().Nodes().Patch(ctx, "w-0", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	before := w0.m.Status()
	_, err = c.job(w0, "v3")
	if !errors.Is(err, fleet.ErrRolledBack) || !strings.Contains(err.Error(), "w-0 rolled back from v3") || !strings.Contains(err.Error(), "rollout is stopped") {
		t.Fatalf("%v, want the rollback reported", err)
	}
	t.Logf("w-0 exits with: %v", err)
	if st := w0.m.Status(); st.Generation != before.Generation || st.Staged != nil {
		t.Errorf("META changed: generation %d → %d, staged %+v", before.Generation, st.Generation, st.Staged)
	}
	k := c.getNode("w-0")
	if k.Spec.Unschedulable || k.Labels[fleet.LabelPhase] != "rolled-back" || k.Annotations[fleet.AnnTarget] != "" || k.Annotations[fleet.AnnCordoned] != "" {
		t.Errorf("w-0: labels %v annotations %v unschedulable %v", k.Labels, k.Annotations, k.Spec.Unschedulable)
	}
	if s, _ := c.lock(1).Stopped(ctx); s == nil || s.Node != "w-0" {
		t.Errorf("stop %+v", s)
	}
	if hs, _ := c.lock(1).Holders(ctx); len(hs) != 0 {
		t.Errorf("lock held: %+v", hs)
	}
}

// TestDrainBlocked: a PodDisruptionBudget that allows no disruption keeps
// the drain from finishing; at --drain-timeout the agent gives up cleanly
// and says which pods and budgets blocked it.
func TestDrainBlocked(t *testing.T) {
	c := newCluster(t, 0, 2, "v2")
	kubetest.AddPods(t, c.cs, "db", "pg", []string{"w-0", "w-1"}, 2)
	start := time.Now()
	_, err := c.job(c.nodes[0], "v2", func(a *fleet.Agent) { a.Drain.Timeout = 3 * time.Second })
	if !errors.Is(err, fleet.ErrDrain) {
		t.Fatalf("%v, want a drain failure", err)
	}
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	for _, want := range []string{"db/pg-0", "db/pg (2 of 2 healthy, 0 disruptions allowed)", "uncordoned", "lock released"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q", want)
		}
	}
	c.checkUntouched(c.nodes[0])
	if hs, _ := c.lock(1).Holders(context.Background()); len(hs) != 0 {
		t.Errorf("lock held: %+v", hs)
	}
	if k := c.getNode("w-0"); k.Annotations[fleet.AnnCordoned] != "" {
		t.Errorf("annotations %v", k.Annotations)
	}
}

// TestLeaseTakeover: an agent that took the lock and died (its node gone
// for good) keeps it for the TTL; then another node takes it over.
func TestLeaseTakeover(t *testing.T) {
	c := newCluster(t, 0, 2)
	ctx := context.Background()
	dead := &fleet.Lock{Client: c.cs, Holder: "w-0", TTL: 2 * time.Second}
	if _, err := dead.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	next := &fleet.Lock{Client: c.cs, Holder: "w-1", TTL: 2 * time.Second}
	_, err := next.Acquire(ctx)
	if !errors.Is(err, fleet.ErrHeld) || !strings.Contains(err.Error(), "node w-0") {
		t.Fatalf("%v, want held by w-0", err)
	}
	// A renewal by the holder keeps it.
	time.Sleep(1500 * time.Millisecond)
	if _, err := dead.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := next.Acquire(ctx); !errors.Is(err, fleet.ErrHeld) {
		t.Fatalf("taken over within the TTL of a renewal: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = next.Acquire(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never taken over: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if held, _ := dead.Held(ctx); held {
		t.Fatal("both hold it")
	}
	// The node that died comes back: it no longer holds the lock, and its
	// release frees nothing of the new holder's.
	if err := dead.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held, _ := next.Held(ctx); !held {
		t.Fatal("the old holder's release freed the new holder's lease")
	}
}

// TestLockExclusive: many agents at once, on free and on expired leases:
// exactly as many win as there are leases.
func TestLockExclusive(t *testing.T) {
	c := newCluster(t, 0, 0)
	ctx := context.Background()
	for _, slots := range []int{1, 2} {
		for round := range 3 {
			var wg sync.WaitGroup
			var mu sync.Mutex
			var won []string
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l := &fleet.Lock{Client: c.cs, Name: "excl", Slots: slots, Holder: string(rune('a' + i)), TTL: time.Second}
					if _, err := l.Acquire(ctx); err == nil {
						mu.Lock()
						won = append(won, l.Holder)
						mu.Unlock()
					} else if !errors.Is(err, fleet.ErrHeld) {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if len(won) != slots {
				t.Fatalf("slots %d round %d: %v won", slots, round, won)
			}
			time.Sleep(2100 * time.Millisecond) // every lease expires: the next round takes them over
		}
	}
}

// TestWaitForConfirm: the Job that runs again after the reboot finds the
// target on trial and waits for the node's health checks to confirm it;
// a trial never confirmed, or a node not Ready in a new boot, is not done.
func TestWaitForConfirm(t *testing.T) {
	c := newCluster(t, 0, 1, "v2")
	n := c.nodes[0]
	ctx := context.Background()
	a := c.agent(n, "v2")
	if res, err := a.Run(ctx); err != nil || res.Outcome != fleet.Rebooting || !n.reboot {
		t.Fatalf("%+v, %v", res, err)
	}
	// The firmware and prestage bring up the trial; its confirm has not run.
	kubetest.SetReady(t, c.cs, n.name, false, "")
	slot := n.m.Firmware()
	for d := n.m.Prestage(slot); d.Slot != ""; d = n.m.Prestage(slot) {
		slot = d.Slot
	}
	n.slot = slot
	if sl := n.m.Slots(); sl.Phase != meta.PhaseTrial || sl.Trial != slot {
		t.Fatalf("not on trial: %+v", sl)
	}
	kubetest.SetReady(t, c.cs, n.name, true, "boot-1")

	a = c.agent(n, "v2")
	a.ConfirmTimeout = 500 * time.Millisecond
	if _, err := a.Run(ctx); !errors.Is(err, fleet.ErrNotDone) || !strings.Contains(err.Error(), "still on trial") {
		t.Fatalf("%v, want not done: on trial", err)
	}
	if held, _ := c.lock(1).Holders(ctx); len(held) != 1 || held[0].Node != n.name {
		t.Fatalf("lock not kept while on trial: %+v", held)
	}
	a = c.agent(n, "v2")
	done := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, err := n.m.Confirm(slot) // stagehand-confirm.service, after boot-complete.target
		done <- err
	}()
	// Ready=false in the new boot: confirmed, yet not done.
	kubetest.SetReady(t, c.cs, n.name, false, "")
	a.ReadyTimeout = time.Second
	if _, err := a.Run(ctx); !errors.Is(err, fleet.ErrNotDone) || !strings.Contains(err.Error(), "not Ready") {
		t.Fatalf("%v, want not done: not Ready", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if k := c.getNode(n.name); !k.Spec.Unschedulable {
		t.Fatal("uncordoned before Ready")
	}
	kubetest.SetReady(t, c.cs, n.name, true, "")
	if res, err := c.agent(n, "v2").Run(ctx); err != nil || res.Outcome != fleet.Upgraded {
		t.Fatalf("%+v, %v", res, err)
	}
	c.checkUpgraded(n, "v2")
}

// TestBadInput: each refusal is one clear error, and nothing is staged
// and no node left cordoned.
func TestBadInput(t *testing.T) {
	c := newCluster(t, 0, 2, "v2")
	ctx := context.Background()
	other := &fleet.Lock{Client: c.cs, Holder: "w-1"}
	for _, tc := range []struct {
		name  string
		tweak func(*fleet.Agent)
		want  string
	}{
		{"no such node", func(a *fleet.Agent) { a.Node = "w-9" }, `node "w-9" does not exist`},
		{"not an image reference", func(a *fleet.Agent) { a.Stage.Image = "Not A Ref" }, "malformed image reference"},
		{"no such image", func(a *fleet.Agent) { a.Stage.Image = c.ref("v9") }, "v9"},
		{"missing RBAC", func(a *fleet.Agent) { a.Client = c.api.Client(kubetest.NoRolesToken) }, "contrib/kubernetes/rbac.yaml"},
		{"unreachable API server", func(a *fleet.Agent) {
			cfg := c.api.Config(kubetest.AdminToken)
			cfg.Host = "https://127.0.0.1:1"
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			a.Client = cs
		}, "cannot be reached"},
		{"lock held by another node", func(a *fleet.Agent) {
			if _, err := other.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
		}, "held by node w-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.job(c.nodes[0], "v2", tc.tweak)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("more than one line: %q", err)
			}
			t.Logf("%v", err)
			c.checkUntouched(c.nodes[0])
		})
	}
	// A node that lost its lock (taken over while it was away) with its
	// upgrade staged and cordoned by us: staged payload cancelled, node
	// uncordoned, nothing rebooted.
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	n := c.nodes[0]
	a := c.agent(n, "v2")
	a.Reboot = func(context.Context) error { return errors.New("killed") }
	if _, err := a.Run(ctx); err == nil {
		t.Fatal("reboot failure not reported")
	}
	if n.m.Staged() == nil || !c.getNode(n.name).Spec.Unschedulable {
		t.Fatal("not staged and cordoned before the reboot")
	}
	lk := c.lock(1)
	if err := (&fleet.Lock{Client: c.cs, Holder: n.name}).Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c.job(n, "v2")
	if !errors.Is(err, fleet.ErrHeld) {
		t.Fatalf("%v, want held", err)
	}
	c.checkUntouched(n)
	if s, _ := lk.Stopped(ctx); s != nil {
		t.Errorf("stopped: %+v", s)
	}
	if evs, _ := c.cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{}); len(evs.Items) != 1 {
		t.Errorf("events: %d, want the one Rebooting", len(evs.Items))
	}
}

// TestKured: the kured variant stages on every node and writes the
// sentinel; kured reboots them one by one; a rollback stops the rollout:
// a node staged but not rebooted yet cancels and clears its sentinel.
func TestKured(t *testing.T) {
	c := newCluster(t, 0, 3, "v3")
	ctx := context.Background()
	sentinel := func(n *node) string { return filepath.Join(n.m.Dir, "reboot-required") }
	kured := func(a *fleet.Agent) { a.Sentinel = sentinel(c.node(a.Node)) }
	for _, n := range c.nodes {
		n.healthy = func(v string) bool { return n.name != "w-0" }
		res, err := c.job(n, "v3", kured)
		if err != nil || res.Outcome != fleet.Staged || n.reboot {
			t.Fatalf("%s: %+v, %v", n.name, res, err)
		}
		if _, err := os.Stat(sentinel(n)); err != nil {
			t.Fatalf("%s: no sentinel: %v", n.name, err)
		}
		if n.m.Staged() == nil || c.getNode(n.name).Spec.Unschedulable {
			t.Fatalf("%s: not staged, or cordoned by stagehand", n.name)
		}
	}
	// kured takes its lock and reboots w-1: v3 comes up there.
	w0, w1, w2 := c.nodes[0], c.nodes[1], c.nodes[2]
	c.boot(w1)
	if res, err := c.job(w1, "v3", kured); err != nil || res.Outcome != fleet.Upgraded {
		t.Fatalf("w-1: %+v, %v", res, err)
	}
	if _, err := os.Stat(sentinel(w1)); err == nil {
		t.Error("w-1's sentinel left after its upgrade")
	}
	c.checkUpgraded(w1, "v3")
	// Then w-0, where v3 does not come up: rolled back, the rollout stops.
	c.boot(w0)
	if _, err := c.job(w0, "v3", kured); !errors.Is(err, fleet.ErrRolledBack) {
		t.Fatalf("w-0: %v", err)
	}
	// w-2, staged, with its sentinel, is next in kured's line: its agent
	// cancels first.
	if _, err := c.job(w2, "v3", kured); !errors.Is(err, fleet.ErrStopped) {
		t.Fatalf("w-2: %v", err)
	}
	if _, err := os.Stat(sentinel(w2)); err == nil {
		t.Error("w-2's sentinel left while the rollout is stopped")
	}
	c.checkUntouched(w2)
	if s, _ := c.lock(1).Stopped(ctx); s == nil || s.Node != "w-0" {
		t.Fatalf("stop %+v", s)
	}
}

// TestWaitNodes: the workers' Plan waits for the control plane.
func TestWaitNodes(t *testing.T) {
	c := newCluster(t, 1, 1, "v2")
	sel := fleet.ControlPlaneLabel
	cs := c.agentCS
	ctx := context.Background()
	err := fleet.WaitNodes(ctx, cs, sel, "v2", 50*time.Millisecond, 300*time.Millisecond)
	if !errors.Is(err, fleet.ErrNotDone) || !strings.Contains(err.Error(), "cp-0 (none, none)") {
		t.Fatalf("%v", err)
	}
	done := make(chan error, 1)
	go func() { done <- fleet.WaitNodes(ctx, cs, sel, "v2", 50*time.Millisecond, time.Minute) }()
	// A single member: the guard refuses (no quorum left), rightly.
	if _, err := c.job(c.nodes[0], "v2", func(a *fleet.Agent) { a.Etcd = nil }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	if err := fleet.WaitNodes(ctx, cs, "no-such-label", "v2", time.Millisecond, time.Millisecond); err == nil || !strings.Contains(err.Error(), "no node matches") {
		t.Fatal(err)
	}
}
