package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/fleet"
	"github.com/stagehand-dev/stagehand/fleet/etcdguard"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
)

// cluster is a simulated fleet: Node objects in a real API server, each
// backed by a stagehand disk image whose reboot runs the real early-boot
// flow (applytest), the control-plane nodes each with a member of a real
// etcd cluster that goes down while its node reboots.
type cluster struct {
	t   testing.TB
	api *kubetest.APIServer
	cs  *kubernetes.Clientset // the administrator's
	// agentCS is the agents': the service account of contrib's rbac.yaml.
	agentCS *kubernetes.Clientset
	etcd    *kubetest.Etcd
	ctrl    *kubetest.Controllers
	reg     string
	nodes   []*node
	// check, when set, runs at each reboot of a node, holding the locks.
	check func(n *node)
}

type node struct {
	name    string
	m       *applytest.Machine
	slot    meta.Slot // the slot its system runs
	member  int       // etcd member index, -1 on a worker
	boots   int
	healthy func(version string) bool // does this version come up and pass its checks
	reboot  bool                      // the last run asked for a reboot
}

// newCluster makes cp control-plane and w worker nodes running v1, with a
// registry serving the versions given.
func newCluster(t testing.TB, cp, w int, versions ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, api: kubetest.StartAPIServer(t), reg: applytest.Registry(t)}
	c.cs = c.api.Client(kubetest.AdminToken)
	// The agents run as the shipped RBAC allows, and no more.
	kubetest.Apply(t, c.cs, filepath.Join(kubetest.Root(), "contrib", "kubernetes", "rbac.yaml"), false)
	c.agentCS = c.api.Client(kubetest.AgentToken)
	c.ctrl = kubetest.RunControllers(t, c.cs)
	if cp > 0 {
		c.etcd = kubetest.StartEtcd(t, cp)
	}
	for i := 0; i < cp+w; i++ {
		n := &node{m: applytest.NewDisk(t, "v1"), slot: meta.SlotA, member: -1, healthy: func(string) bool { return true }}
		lbl := map[string]string{"kubernetes.io/os": "linux"}
		if i < cp {
			n.name, n.member = fmt.Sprintf("cp-%d", i), i
			lbl[fleet.ControlPlaneLabel] = ""
		} else {
			n.name = fmt.Sprintf("w-%d", i-cp)
		}
		kubetest.AddNode(t, c.cs, n.name, lbl)
		c.nodes = append(c.nodes, n)
	}
	for _, v := range versions {
		c.nodes[0].m.Push(c.reg, v)
	}
	return c
}

func (c *cluster) ref(version string) string { return c.reg + "/stagehand/os:" + version }

func (c *cluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

type logWriter struct {
	t    testing.TB
	name string
}

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// agent is the agent of n for the target version, as the Plan runs it.
func (c *cluster) agent(n *node, version string) *fleet.Agent {
	a := &fleet.Agent{
		Client: c.agentCS, Node: n.name,
		Stage:  stage.Options{Disk: n.m.Img, Image: c.ref(version), Insecure: true},
		Lock:   fleet.Lock{},
		Drain:  fleet.Drainer{Timeout: 20 * time.Second},
		Booted: n.slot, Poll: 50 * time.Millisecond,
		ConfirmTimeout: 5 * time.Second, ReadyTimeout: 20 * time.Second,
		Log: logWriter{c.t, n.name},
		Reboot: func(context.Context) error {
			n.reboot = true
			return nil
		},
	}
	if n.member >= 0 {
		a.Etcd = &etcdguard.Options{Endpoints: c.etcdEndpoints(), Member: fmt.Sprintf("m%d", n.member), ReadTimeout: 2 * time.Second}
	}
	return a
}

func (c *cluster) etcdEndpoints() []string {
	var eps []string
	for _, m := range c.etcd.Members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// job is what system-upgrade-controller's Job does on n: run the agent,
// and run it again after each reboot it asks for, until it exits.
func (c *cluster) job(n *node, version string, tweak ...func(*fleet.Agent)) (*fleet.Result, error) {
	for range 4 {
		n.reboot = false
		a := c.agent(n, version)
		for _, f := range tweak {
			f(a)
		}
		res, err := a.Run(context.Background())
		if err != nil || !n.reboot {
			return res, err
		}
		c.boot(n)
	}
	c.t.Fatalf("%s: the job did not end in 4 runs", n.name)
	return nil, nil
}

// boot reboots n: its kubelet and etcd member go down, the firmware and
// prestage run on its disk until a system stays up (a trial whose version
// is not healthy dies and the machine resets), then both come back in a
// new boot.
func (c *cluster) boot(n *node) {
	c.t.Helper()
	if c.check != nil {
		c.check(n)
	}
	kubetest.SetReady(c.t, c.cs, n.name, false, "")
	if n.member >= 0 {
		c.etcd.Stop(n.member)
	}
	n.slot = n.m.SettleWith(func(_ meta.Slot, version string) bool { return n.healthy(version) })
	if n.member >= 0 {
		c.etcd.Start(n.member)
	}
	n.boots++
	kubetest.SetReady(c.t, c.cs, n.name, true, fmt.Sprintf("boot-%d", n.boots))
}

func (c *cluster) getNode(name string) *corev1.Node {
	c.t.Helper()
	n, err := c.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

// lock is the fleet lock of slots leases, as the agents use it.
func (c *cluster) lock(slots int) *fleet.Lock {
	return &fleet.Lock{Client: c.cs, Slots: slots}
}

// checkUpgraded checks n runs version confirmed, schedulable, with the
// labels saying so and nothing of the upgrade left on it.
func (c *cluster) checkUpgraded(n *node, version string) {
	c.t.Helper()
	st := n.m.Status()
	run := st.Slots.A
	if st.Slots.Active == meta.SlotB {
		run = st.Slots.B
	}
	if st.Slots.Phase != meta.PhaseIdle || run.Version != version || run.State != "good" || n.slot != st.Slots.Active {
		c.t.Fatalf("%s runs slot %s: META %+v", n.name, n.slot, st.Slots)
	}
	if st.Slots.Pending == "" {
		n.m.CheckSettled(n.slot)
	} else if st.Slots.Pending != n.slot {
		// Confirmed after a kexec: upgraded, its blessing completes at
		// the next firmware boot (apply's pending.go).
		c.t.Fatalf("%s runs slot %s, but slot %s is firmware start pending", n.name, n.slot, st.Slots.Pending)
	}
	k := c.getNode(n.name)
	if k.Spec.Unschedulable {
		c.t.Errorf("%s left cordoned", n.name)
	}
	if k.Labels[fleet.LabelVersion] != version || k.Labels[fleet.LabelPhase] != "idle" || k.Labels[fleet.LabelSlot] != string(n.slot) {
		c.t.Errorf("%s labels %v", n.name, k.Labels)
	}
	for _, a := range []string{fleet.AnnCordoned, fleet.AnnTarget, fleet.AnnBootID} {
		if v, ok := k.Annotations[a]; ok {
			c.t.Errorf("%s: annotation %s=%q left", n.name, a, v)
		}
	}
}

// checkUntouched checks n still runs v1 with nothing staged and is not
// cordoned.
func (c *cluster) checkUntouched(n *node) {
	c.t.Helper()
	st := n.m.Status()
	if st.Staged != nil || st.Slots.Active != meta.SlotA || st.Slots.A.Version != "v1" || st.Slots.Phase != meta.PhaseIdle {
		c.t.Errorf("%s was touched: META %+v staged %+v", n.name, st.Slots, st.Staged)
	}
	if c.getNode(n.name).Spec.Unschedulable {
		c.t.Errorf("%s left cordoned", n.name)
	}
}

func (c *cluster) events(node, reason string) []corev1.Event {
	c.t.Helper()
	evs, err := c.cs.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + node + ",reason=" + reason})
	if err != nil {
		c.t.Fatal(err)
	}
	return evs.Items
}

func (c *cluster) workers() []string {
	var w []string
	for _, n := range c.nodes {
		if n.member < 0 {
			w = append(w, n.name)
		}
	}
	return w
}

// addWorkload puts on every node a DaemonSet's pod and a mirror pod (both
// stay through a drain), and spreads app pods with a PDB over the workers.
func (c *cluster) addWorkload() {
	c.t.Helper()
	ctx := context.Background()
	ds, err := c.cs.AppsV1().DaemonSets("kube-system").Create(ctx, &appsDaemonSet, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	ctrl := true
	for _, n := range c.nodes {
		for _, p := range []*corev1.Pod{
			{ObjectMeta: metav1.ObjectMeta{Name: "node-agent-" + n.name, Namespace: "kube-system", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: &ctrl}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "static-" + n.name, Namespace: "kube-system", Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "x"}}},
		} {
			p.Spec = corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}
			if err := kubetest.RunPod(ctx, c.cs, p); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	w := c.workers()
	kubetest.AddPods(c.t, c.cs, "shop", "web", append(w, w...), len(w))
}

// TestRollout upgrades a fleet of 3 control-plane and 3 worker nodes to
// v2 as the shipped Plans do: the control plane one at a time behind the
// etcd guard, then the workers two at a time, each drained with its
// budgets honoured and uncordoned only when confirmed and Ready again.
func TestRollout(t *testing.T) {
	c := newCluster(t, 3, 3, "v2")
	c.addWorkload()
	ctx := context.Background()
	var mu sync.Mutex
	c.check = func(n *node) {
		mu.Lock()
		defer mu.Unlock()
		hs, err := c.lock(2).Holders(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		var holders []string
		for _, h := range hs {
			holders = append(holders, h.Node)
		}
		if !strings.Contains(strings.Join(holders, ","), n.name) {
			t.Errorf("%s reboots without the fleet lock (holders %v)", n.name, holders)
		}
		if n.member >= 0 && len(holders) != 1 {
			t.Errorf("control-plane node %s reboots while %v hold the lock", n.name, holders)
		}
		if len(holders) > 2 {
			t.Errorf("%v hold the lock at once", holders)
		}
		if n.member >= 0 {
			h, err := etcdguard.Held(ctx, etcdguard.Options{Endpoints: c.etcdEndpoints()})
			if err != nil || h == nil || h.Holder != n.name {
				t.Errorf("%s reboots without the etcd lock: %+v, %v", n.name, h, err)
			}
		}
		k := c.getNode(n.name)
		if !k.Spec.Unschedulable {
			t.Errorf("%s reboots schedulable", n.name)
		}
		for _, p := range kubetest.PodsOn(t, c.cs, n.name) {
			if !strings.HasPrefix(p, "kube-system/") {
				t.Errorf("%s reboots with %s on it", n.name, p)
			}
		}
	}
	// Plan "stagehand-control-plane": concurrency 1.
	for _, n := range c.nodes[:3] {
		res, err := c.job(n, "v2")
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if res.Outcome != fleet.Upgraded || res.Version != "v2" {
			t.Fatalf("%s: %+v", n.name, res)
		}
		c.checkUpgraded(n, "v2")
	}
	// Plan "stagehand-workers": concurrency 2, with max-unavailable 2.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, n := range c.nodes[3:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			for {
				_, err := c.job(n, "v2", func(a *fleet.Agent) { a.Lock.Slots = 2 })
				if errors.Is(err, fleet.ErrHeld) {
					time.Sleep(200 * time.Millisecond) // the Job's backoff
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", n.name, err)
				}
				return
			}
		}()
	}
	wg.Wait()
	for _, n := range c.nodes {
		c.checkUpgraded(n, "v2")
		if n.boots != 1 {
			t.Errorf("%s booted %d times", n.name, n.boots)
		}
		if len(c.events(n.name, "Upgraded")) != 1 {
			t.Errorf("%s: events %v", n.name, c.events(n.name, "Upgraded"))
		}
	}
	if hs, _ := c.lock(2).Holders(ctx); len(hs) != 0 {
		t.Errorf("lock still held: %+v", hs)
	}
	if h, err := etcdguard.Held(ctx, etcdguard.Options{Endpoints: c.etcdEndpoints()}); err != nil || h != nil {
		t.Errorf("etcd lock: %+v, %v", h, err)
	}
	// A run on an upgraded node is a no-op.
	res, err := c.job(c.nodes[4], "v2")
	if err != nil || res.Outcome != fleet.Upgraded || c.nodes[4].boots != 1 {
		t.Fatalf("second run: %+v, %v", res, err)
	}
}

var appsDaemonSet = appsv1.DaemonSet{
	ObjectMeta: metav1.ObjectMeta{Name: "node-agent"},
	Spec: appsv1.DaemonSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "node-agent"}},
		Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "node-agent"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
		},
	},
}
