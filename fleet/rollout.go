package fleet

import (
	"context"
	"fmt"
	"sort"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Rollout is what a person asks of a rollout: who holds the fleet lock,
// whether it is stopped, and where each node is.
type Rollout struct {
	Namespace string       `json:"namespace"`
	Leases    []LeaseState `json:"leases"`
	Stopped   *Stop        `json:"stopped"` // nil: the rollout runs
	Nodes     []NodeState  `json:"nodes"`
}

// LeaseState is one Lease of the fleet lock; Holder is empty when free.
type LeaseState struct {
	Name     string     `json:"name"`
	Holder   string     `json:"holder,omitempty"`
	Acquired *time.Time `json:"acquired,omitempty"`
	Renewed  *time.Time `json:"renewed,omitempty"`
	// Expired: not renewed for its duration (the lock TTL of its holder's
	// run), so the next node may take it over.
	Expired bool `json:"expired,omitempty"`
}

// NodeState is what stagehand recorded on a node (its stagehand.dev/
// labels and annotations).
type NodeState struct {
	Name           string `json:"name"`
	Version        string `json:"version"`
	Slot           string `json:"slot"`
	Phase          string `json:"phase"`
	LastTransition string `json:"lastTransition,omitempty"`
	Reason         string `json:"reason,omitempty"`
	Target         string `json:"target,omitempty"`
	RolledBackFrom string `json:"rolledBackFrom,omitempty"`
	Cordoned       bool   `json:"cordoned,omitempty"` // by stagehand
	Unschedulable  bool   `json:"unschedulable,omitempty"`
}

// ReadRollout reads the rollout of l's lock (l.Slots is ignored: every
// Lease NAME-0, NAME-1, … that exists is read) and the nodes selector
// matches ("" for all). It only reads: a missing Lease is a free one.
func ReadRollout(ctx context.Context, cs kubernetes.Interface, l Lock, selector string) (*Rollout, error) {
	l.Client = cs
	l.defaults()
	r := &Rollout{Namespace: l.Namespace, Leases: []LeaseState{}, Nodes: []NodeState{}}
	api := cs.CoordinationV1().Leases(l.Namespace)
	for i := 0; ; i++ {
		le, err := api.Get(ctx, l.leaseName(i), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if i == 0 {
				r.Leases = append(r.Leases, LeaseState{Name: l.leaseName(0)})
			}
			break
		}
		if err != nil {
			return nil, apiError(fmt.Sprintf("lease %s/%s", l.Namespace, l.leaseName(i)), err)
		}
		if i == 0 {
			r.Stopped = stopOf(le)
		}
		r.Leases = append(r.Leases, l.leaseState(le))
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, apiError("nodes", err)
	}
	for _, n := range nodes.Items {
		r.Nodes = append(r.Nodes, NodeState{
			Name: n.Name, Version: n.Labels[LabelVersion], Slot: n.Labels[LabelSlot], Phase: n.Labels[LabelPhase],
			LastTransition: n.Annotations[AnnLastTransition], Reason: n.Annotations[AnnReason],
			Target: n.Annotations[AnnTarget], RolledBackFrom: n.Annotations[AnnRolledBackFrom],
			Cordoned: n.Annotations[AnnCordoned] == "true", Unschedulable: n.Spec.Unschedulable,
		})
	}
	sort.Slice(r.Nodes, func(i, j int) bool { return r.Nodes[i].Name < r.Nodes[j].Name })
	return r, nil
}

func (l *Lock) leaseState(le *coordv1.Lease) LeaseState {
	s := LeaseState{Name: le.Name, Holder: holderOf(le)}
	if s.Holder == "" {
		return s
	}
	if t := le.Spec.AcquireTime; t != nil {
		s.Acquired = &t.Time
	}
	if t := le.Spec.RenewTime; t != nil {
		s.Renewed = &t.Time
	}
	s.Expired = l.expired(le)
	return s
}
