package fleet

import (
	"cmp"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WaitNodes waits until every node that selector matches runs version,
// confirmed and done (phase idle, nothing of an upgrade left on it), as
// the labels and annotations the agents write say: a Plan's prepare step
// that orders the workers after the control plane. A node that rolled
// back ends the wait at once with ErrRolledBack.
func WaitNodes(ctx context.Context, cs kubernetes.Interface, selector, version string, poll, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	want := labelValue(version)
	for {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return apiError("nodes "+selector, err)
		}
		if len(nodes.Items) == 0 {
			return fmt.Errorf("no node matches %q", selector)
		}
		var pending []string
		for _, n := range nodes.Items {
			if n.Labels[LabelPhase] == "rolled-back" {
				return fmt.Errorf("%w: node %s: %s", ErrRolledBack, n.Name, n.Annotations[AnnReason])
			}
			if n.Labels[LabelVersion] != want || n.Labels[LabelPhase] != "idle" || n.Annotations[AnnTarget] != "" || !ready(&n) {
				pending = append(pending, fmt.Sprintf("%s (%s, %s)", n.Name, cmp.Or(n.Labels[LabelVersion], "none"), cmp.Or(n.Labels[LabelPhase], "none")))
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			sort.Strings(pending)
			return fmt.Errorf("%w: after %s, nodes %q not at %s yet: %s", ErrNotDone, timeout, selector, version, strings.Join(pending, ", "))
		}
		if err := sleep(ctx, poll); err != nil {
			return err
		}
	}
}
