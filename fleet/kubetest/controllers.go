package kubetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Controllers plays, in a few loops, the parts of a cluster the API server
// alone does not run: a kubelet finishing the deletion of a pod (after its
// grace period, here at once), a ReplicaSet controller and scheduler
// placing a replacement on another schedulable Ready node, and the
// disruption controller writing each PodDisruptionBudget's status.
type Controllers struct {
	t       testing.TB
	cs      kubernetes.Interface
	replace atomic.Bool
}

// RunControllers runs the loops until the test ends.
func RunControllers(t testing.TB, cs kubernetes.Interface) *Controllers {
	c := &Controllers{t: t, cs: cs}
	c.replace.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			c.pass(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// Replace says whether evicted pods get a replacement (default true).
func (c *Controllers) Replace(on bool) { c.replace.Store(on) }

func (c *Controllers) pass(ctx context.Context) {
	pods, err := c.cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			continue
		}
		zero := int64(0)
		err := c.cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err == nil && c.replace.Load() && metav1.GetControllerOf(&p) != nil && metav1.GetControllerOf(&p).Kind == "ReplicaSet" {
			c.replaceOn(ctx, &p)
		}
	}
	if pods, err = c.cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{}); err != nil {
		return
	}
	pdbs, err := c.cs.PolicyV1().PodDisruptionBudgets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, b := range pdbs.Items {
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		if err != nil {
			continue
		}
		var expected, healthy int32
		for _, p := range pods.Items {
			if p.Namespace != b.Namespace || !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			expected++
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				healthy++
			}
		}
		desired := expected
		if b.Spec.MinAvailable != nil {
			desired = int32(b.Spec.MinAvailable.IntValue())
		} else if b.Spec.MaxUnavailable != nil {
			desired = expected - int32(b.Spec.MaxUnavailable.IntValue())
		}
		allowed := max(healthy-desired, 0)
		s := policyv1.PodDisruptionBudgetStatus{ObservedGeneration: b.Generation, DisruptionsAllowed: allowed, CurrentHealthy: healthy, DesiredHealthy: desired, ExpectedPods: expected}
		if b.Status.ObservedGeneration == s.ObservedGeneration && b.Status.DisruptionsAllowed == s.DisruptionsAllowed && b.Status.CurrentHealthy == s.CurrentHealthy && b.Status.ExpectedPods == s.ExpectedPods && len(b.Status.DisruptedPods) == 0 {
			continue
		}
		b.Status = s
		c.cs.PolicyV1().PodDisruptionBudgets(b.Namespace).UpdateStatus(ctx, &b, metav1.UpdateOptions{}) // a conflict: the next pass
	}
}

// replaceOn creates p's replacement on a schedulable Ready node other than
// p's, the first in name order.
func (c *Controllers) replaceOn(ctx context.Context, p *corev1.Pod) {
	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, n := range nodes.Items {
		if n.Name == p.Spec.NodeName || n.Spec.Unschedulable || !nodeReady(&n) {
			continue
		}
		q := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: p.GenerateName, Namespace: p.Namespace, Labels: p.Labels, OwnerReferences: p.OwnerReferences},
			Spec:       *p.Spec.DeepCopy(),
		}
		if q.GenerateName == "" {
			q.GenerateName = p.Name + "-"
		}
		q.Spec.NodeName = n.Name
		RunPod(ctx, c.cs, q)
		return
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// AddNode creates a Ready node with boot ID boot-0, labelled.
func AddNode(t testing.TB, cs kubernetes.Interface, name string, lbl map[string]string) {
	t.Helper()
	ctx := context.Background()
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = n
	SetReady(t, cs, name, true, "boot-0")
}

// SetReady writes the node's Ready condition and boot ID, as its kubelet
// would (bootID "" keeps the one there).
func SetReady(t testing.TB, cs kubernetes.Interface, name string, ready bool, bootID string) {
	t.Helper()
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		now := metav1.Now()
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady"}}
		if bootID != "" {
			n.Status.NodeInfo.BootID = bootID
		}
		if _, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err == nil {
			return
		} else if !apierrors.IsConflict(err) || attempt > 10 {
			t.Fatal(err)
		}
	}
}

// RunPod creates p and marks it Running and Ready, as its kubelet would
// once its containers started: an eviction of a Pending pod ignores its
// budget.
func RunPod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) error {
	p, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	_, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

// AddPods creates a ReplicaSet's worth of pods named app-0…, one on each of
// nodes, owned by a ReplicaSet app (the object need not exist: drain reads
// only DaemonSets), with a PodDisruptionBudget of minAvailable (-1: none).
func AddPods(t testing.TB, cs kubernetes.Interface, ns, app string, nodes []string, minAvailable int) {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctrl := true
	owner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app, UID: types.UID("rs-" + app), Controller: &ctrl}
	for i, n := range nodes {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", app, i), GenerateName: app + "-", Namespace: ns, Labels: map[string]string{"app": app}, OwnerReferences: []metav1.OwnerReference{owner}},
			Spec:       corev1.PodSpec{NodeName: n, Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
		}
		if err := RunPod(ctx, cs, p); err != nil {
			t.Fatal(err)
		}
	}
	if minAvailable < 0 {
		return
	}
	ma := intstr.FromInt32(int32(minAvailable))
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &ma, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}
	if _, err := cs.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// PodsOn lists the names of the pods bound to node, not being deleted.
func PodsOn(t testing.TB, cs kubernetes.Interface, node string) []string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	return out
}
