package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/drain"
)

// ErrDrain marks a drain that did not finish.
var ErrDrain = errors.New("drain failed")

// DefaultDrainTimeout bounds a drain.
const DefaultDrainTimeout = 10 * time.Minute

// Drainer cordons and drains a node with kubectl's drain library:
// evictions honour PodDisruptionBudgets, DaemonSet and mirror pods stay.
type Drainer struct {
	Client  kubernetes.Interface
	Timeout time.Duration // default DefaultDrainTimeout
	Force   bool          // also delete pods no controller manages
	Out     io.Writer     // the library's progress lines
}

func (d *Drainer) helper(ctx context.Context) *drain.Helper {
	out := d.Out
	if out == nil {
		out = io.Discard
	}
	t := d.Timeout
	if t <= 0 {
		t = DefaultDrainTimeout
	}
	return &drain.Helper{
		Ctx: ctx, Client: d.Client, Force: d.Force,
		GracePeriodSeconds: -1, IgnoreAllDaemonSets: true, DeleteEmptyDirData: true,
		Timeout: t, EvictErrorRetryDelay: time.Second, Out: out, ErrOut: out,
	}
}

// Cordon marks node unschedulable (or schedulable again).
func (d *Drainer) Cordon(ctx context.Context, node *corev1.Node, on bool) error {
	if err := drain.RunCordonOrUncordon(d.helper(ctx), node, on); err != nil {
		what := "cordoning"
		if !on {
			what = "uncordoning"
		}
		return apiError(what+" node "+node.Name, err)
	}
	return nil
}

// Drain evicts node's pods; when it does not finish in time its error
// names the pods left and the budgets that kept them.
func (d *Drainer) Drain(ctx context.Context, node string) error {
	start := time.Now()
	err := drain.RunNodeDrain(d.helper(ctx), node)
	if err == nil {
		return nil
	}
	left, blockers := d.blocked(context.WithoutCancel(ctx), node)
	msg := fmt.Sprintf("node %s after %s", node, time.Since(start).Round(time.Second))
	if len(left) > 0 {
		msg += ": pods left: " + strings.Join(left, ", ")
	}
	if len(blockers) > 0 {
		msg += "; blocked by PodDisruptionBudgets " + strings.Join(blockers, ", ")
	}
	return fmt.Errorf("%w: %s (%s)", ErrDrain, msg, firstLine(err.Error()))
}

// blocked lists the pods the drain would still evict and the budgets that
// allow none of them to go.
func (d *Drainer) blocked(ctx context.Context, node string) (pods, pdbs []string) {
	h := d.helper(ctx)
	list, errs := h.GetPodsForDeletion(node)
	if list == nil || len(errs) > 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	for _, p := range list.Pods() {
		pods = append(pods, p.Namespace+"/"+p.Name)
		budgets, err := d.Client.PolicyV1().PodDisruptionBudgets(p.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, b := range budgets.Items {
			sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(p.Labels)) || b.Status.DisruptionsAllowed > 0 {
				continue
			}
			k := fmt.Sprintf("%s/%s (%d of %d healthy, %d disruptions allowed)", b.Namespace, b.Name, b.Status.CurrentHealthy, b.Status.ExpectedPods, b.Status.DisruptionsAllowed)
			if !seen[k] {
				seen[k] = true
				pdbs = append(pdbs, k)
			}
		}
	}
	sort.Strings(pods)
	sort.Strings(pdbs)
	return pods, pdbs
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
