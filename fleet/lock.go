package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Defaults for Lock.
const (
	DefaultLeaseName = "stagehand-upgrade"
	DefaultNamespace = "system-upgrade" // system-upgrade-controller's, where its Jobs and the agent's account run
	// DefaultLockTTL covers a drain, a staging, a reboot and the health
	// checks of the new version: every run of the agent renews it.
	DefaultLockTTL = 30 * time.Minute
)

// ErrHeld marks the fleet lock held by other nodes.
var ErrHeld = errors.New("fleet upgrade lock held")

// ErrStopped marks a rollout stopped by a node that rolled back.
var ErrStopped = errors.New("rollout stopped")

// Lock is the fleet's upgrade lock: a semaphore of Slots coordination.k8s.io
// Leases (NAME-0 … NAME-(Slots-1)), each held by the name of a node. It is
// held across the node's reboot (the name survives it, a process would
// not) until the node is confirmed and Ready again, and taken over only
// when its holder has not renewed it for longer than TTL. A rollback puts
// a stop on NAME-0 that no holder, renewal or expiry clears: only Resume.
type Lock struct {
	Client    kubernetes.Interface
	Namespace string        // default DefaultNamespace
	Name      string        // default DefaultLeaseName
	Slots     int           // nodes upgrading at once (--max-unavailable), default 1
	Holder    string        // this node's name
	TTL       time.Duration // default DefaultLockTTL
	Now       func() time.Time
}

// Holder is one lease's holder.
type Holder struct {
	Lease    string    `json:"lease"`
	Node     string    `json:"node"`
	Acquired time.Time `json:"acquired"`
	Renew    time.Time `json:"renewed"`
	Expired  bool      `json:"expired"`
}

// Stop is a rollout's stop.
type Stop struct {
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

// Stop's annotations, on lease NAME-0.
const (
	annStoppedBy     = Prefix + "stopped-by"
	annStoppedReason = Prefix + "stopped-reason"
	annStoppedAt     = Prefix + "stopped-at"
)

func (l *Lock) defaults() {
	if l.Namespace == "" {
		l.Namespace = DefaultNamespace
	}
	if l.Name == "" {
		l.Name = DefaultLeaseName
	}
	if l.Slots <= 0 {
		l.Slots = 1
	}
	if l.TTL <= 0 {
		l.TTL = DefaultLockTTL
	}
	if l.Now == nil {
		l.Now = time.Now
	}
}

func (l *Lock) leaseName(i int) string { return fmt.Sprintf("%s-%d", l.Name, i) }

// leases reads the semaphore's leases, creating the missing ones (free).
func (l *Lock) leases(ctx context.Context) ([]*coordv1.Lease, error) {
	l.defaults()
	api := l.Client.CoordinationV1().Leases(l.Namespace)
	out := make([]*coordv1.Lease, l.Slots)
	for i := range out {
		le, err := api.Get(ctx, l.leaseName(i), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			le, err = api.Create(ctx, &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: l.leaseName(i), Namespace: l.Namespace}}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				le, err = api.Get(ctx, l.leaseName(i), metav1.GetOptions{})
			}
		}
		if err != nil {
			return nil, apiError(fmt.Sprintf("lease %s/%s", l.Namespace, l.leaseName(i)), err)
		}
		out[i] = le
	}
	return out, nil
}

func holderOf(le *coordv1.Lease) string {
	if le.Spec.HolderIdentity == nil {
		return ""
	}
	return *le.Spec.HolderIdentity
}

func (l *Lock) expired(le *coordv1.Lease) bool {
	if holderOf(le) == "" {
		return true
	}
	last := le.Spec.RenewTime
	if last == nil {
		last = le.Spec.AcquireTime
	}
	d := time.Duration(0)
	if le.Spec.LeaseDurationSeconds != nil {
		d = time.Duration(*le.Spec.LeaseDurationSeconds) * time.Second
	}
	return last == nil || l.Now().After(last.Add(d))
}

func stopOf(le *coordv1.Lease) *Stop {
	by := le.Annotations[annStoppedBy]
	if by == "" {
		return nil
	}
	t, _ := time.Parse(time.RFC3339, le.Annotations[annStoppedAt])
	return &Stop{Node: by, Reason: le.Annotations[annStoppedReason], Time: t}
}

// StoppedError is ErrStopped with the stop.
type StoppedError struct{ Stop }

func (e *StoppedError) Error() string {
	return fmt.Sprintf("%v since %s by node %s: %s; fix the cause, then run `stagehand-agent node resume`", ErrStopped, e.Time.Format(time.RFC3339), e.Node, e.Reason)
}
func (e *StoppedError) Unwrap() error { return ErrStopped }

// HeldError is ErrHeld with the holders.
type HeldError struct{ Holders []Holder }

func (e *HeldError) Error() string {
	var hs []string
	for _, h := range e.Holders {
		hs = append(hs, fmt.Sprintf("node %s (lease %s, renewed %s)", h.Node, h.Lease, h.Renew.Format(time.RFC3339)))
	}
	return fmt.Sprintf("%v by %s: another node is upgrading; run again once it is done", ErrHeld, strings.Join(hs, ", "))
}
func (e *HeldError) Unwrap() error { return ErrHeld }

// Acquire takes a lease of the semaphore for l.Holder, or renews the one it
// holds; it fails with a StoppedError while the rollout is stopped and a
// HeldError while every lease is held by another live node. The API
// server's resourceVersion check makes a take atomic: two nodes never both
// hold one lease.
func (l *Lock) Acquire(ctx context.Context) (string, error) {
	l.defaults()
	for attempt := 0; ; attempt++ {
		les, err := l.leases(ctx)
		if err != nil {
			return "", err
		}
		if s := stopOf(les[0]); s != nil {
			return "", &StoppedError{*s}
		}
		order := make([]*coordv1.Lease, 0, len(les))
		for _, le := range les { // ours first: a renewal
			if holderOf(le) == l.Holder {
				order = append([]*coordv1.Lease{le}, order...)
			} else {
				order = append(order, le)
			}
		}
		var conflict bool
		for _, le := range order {
			if holderOf(le) != l.Holder && !l.expired(le) {
				continue
			}
			err := l.write(ctx, le, l.Holder)
			if err == nil {
				return le.Name, nil
			}
			if !apierrors.IsConflict(err) {
				return "", apiError("lease "+l.Namespace+"/"+le.Name, err)
			}
			conflict = true // another node took it first: read again
		}
		if !conflict || attempt >= 5 {
			hs, _ := l.holders(les)
			return "", &HeldError{hs}
		}
	}
}

// write sets le's holder (renewing when it is ours already), or frees it
// (holder "").
func (l *Lock) write(ctx context.Context, le *coordv1.Lease, holder string) error {
	le = le.DeepCopy()
	now := metav1.NewMicroTime(l.Now())
	if holder == "" {
		le.Spec.HolderIdentity, le.Spec.AcquireTime, le.Spec.RenewTime, le.Spec.LeaseDurationSeconds = nil, nil, nil, nil
	} else {
		if holderOf(le) != holder || l.expired(le) {
			le.Spec.AcquireTime = &now
			if le.Spec.LeaseTransitions == nil {
				le.Spec.LeaseTransitions = new(int32)
			}
			*le.Spec.LeaseTransitions++
		}
		secs := int32(l.TTL / time.Second)
		le.Spec.HolderIdentity, le.Spec.RenewTime, le.Spec.LeaseDurationSeconds = &holder, &now, &secs
	}
	_, err := l.Client.CoordinationV1().Leases(le.Namespace).Update(ctx, le, metav1.UpdateOptions{})
	return err
}

// Held reports whether l.Holder holds a lease now.
func (l *Lock) Held(ctx context.Context) (bool, error) {
	les, err := l.leases(ctx)
	if err != nil {
		return false, err
	}
	for _, le := range les {
		if holderOf(le) == l.Holder {
			return true, nil
		}
	}
	return false, nil
}

// Release frees the lease l.Holder holds; holding none is no error.
func (l *Lock) Release(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		les, err := l.leases(ctx)
		if err != nil {
			return err
		}
		var conflict bool
		for _, le := range les {
			if holderOf(le) != l.Holder {
				continue
			}
			if err := l.write(ctx, le, ""); apierrors.IsConflict(err) && attempt < 5 {
				conflict = true
			} else if err != nil {
				return apiError("lease "+l.Namespace+"/"+le.Name, err)
			}
		}
		if !conflict {
			return nil
		}
	}
}

// Stop stops the rollout, naming l.Holder and why; the first stop stays.
func (l *Lock) Stop(ctx context.Context, reason string) error {
	return l.annotateFirst(ctx, func(le *coordv1.Lease) bool {
		if stopOf(le) != nil {
			return false
		}
		if le.Annotations == nil {
			le.Annotations = map[string]string{}
		}
		le.Annotations[annStoppedBy] = l.Holder
		le.Annotations[annStoppedReason] = reason
		le.Annotations[annStoppedAt] = l.Now().UTC().Format(time.RFC3339)
		return true
	})
}

// Resume clears a stop and returns it (nil when the rollout ran).
func (l *Lock) Resume(ctx context.Context) (*Stop, error) {
	var was *Stop
	err := l.annotateFirst(ctx, func(le *coordv1.Lease) bool {
		if was = stopOf(le); was == nil {
			return false
		}
		delete(le.Annotations, annStoppedBy)
		delete(le.Annotations, annStoppedReason)
		delete(le.Annotations, annStoppedAt)
		return true
	})
	return was, err
}

// Stopped returns the rollout's stop, nil when it runs.
func (l *Lock) Stopped(ctx context.Context) (*Stop, error) {
	les, err := l.leases(ctx)
	if err != nil {
		return nil, err
	}
	return stopOf(les[0]), nil
}

func (l *Lock) annotateFirst(ctx context.Context, change func(*coordv1.Lease) bool) error {
	for attempt := 0; ; attempt++ {
		les, err := l.leases(ctx)
		if err != nil {
			return err
		}
		le := les[0].DeepCopy()
		if !change(le) {
			return nil
		}
		_, err = l.Client.CoordinationV1().Leases(le.Namespace).Update(ctx, le, metav1.UpdateOptions{})
		if err == nil || !apierrors.IsConflict(err) || attempt >= 5 {
			return apiError("lease "+l.Namespace+"/"+le.Name, err)
		}
	}
}

// Holders lists the leases' live and expired holders.
func (l *Lock) Holders(ctx context.Context) ([]Holder, error) {
	les, err := l.leases(ctx)
	if err != nil {
		return nil, err
	}
	return l.holders(les)
}

func (l *Lock) holders(les []*coordv1.Lease) ([]Holder, error) {
	var hs []Holder
	for _, le := range les {
		if holderOf(le) == "" {
			continue
		}
		h := Holder{Lease: le.Name, Node: holderOf(le), Expired: l.expired(le)}
		if le.Spec.AcquireTime != nil {
			h.Acquired = le.Spec.AcquireTime.Time
		}
		if le.Spec.RenewTime != nil {
			h.Renew = le.Spec.RenewTime.Time
		}
		hs = append(hs, h)
	}
	return hs, nil
}
