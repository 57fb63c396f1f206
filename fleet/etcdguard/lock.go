package etcdguard

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LockKey holds the control-plane upgrade lock: one node at a time.
const LockKey = "/stagehand.dev/v1/upgrade-lock"

// ErrHeld marks the lock held by another node.
var ErrHeld = errors.New("etcd upgrade lock held")

// ErrNotHealthy marks a release refused because the cluster is not whole
// again; the lock is kept.
var ErrNotHealthy = errors.New("etcd not healthy again")

// Holder is the lock's value.
type Holder struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
}

// Acquire takes the upgrade lock for holder (this node's name), then runs
// Check under it; a refusal releases the lock again. The lock lives in an
// etcd lease of ttl (default DefaultLockTTL), not in a session: it is held
// across this node's reboot, renewed by each Acquire of the same holder,
// and lapses when its holder is gone for longer than ttl. Another holder's
// lock fails with ErrHeld, naming it.
func Acquire(ctx context.Context, o Options, holder string, ttl time.Duration) (*Report, error) {
	o.defaults()
	if ttl <= 0 {
		ttl = DefaultLockTTL
	}
	cli, err := o.client(o.Endpoints)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	took, err := lock(ctx, cli, holder, ttl)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	r, err := check(ctx, cli, o)
	if err != nil && took {
		if uerr := unlock(ctx, cli, holder); uerr != nil {
			o.Logf("releasing the etcd upgrade lock after a refusal: %v", uerr)
		}
	}
	return r, err
}

// lock takes or renews the lock; took is whether this call created it.
func lock(ctx context.Context, cli *clientv3.Client, holder string, ttl time.Duration) (took bool, err error) {
	cur, lease, err := current(ctx, cli)
	if err != nil {
		return false, err
	}
	if cur != nil {
		if cur.Holder != holder {
			return false, fmt.Errorf("%w by %s since %s (it lapses if that node is gone for %s)", ErrHeld, cur.Holder, cur.Since.Format(time.RFC3339), ttl)
		}
		if _, err := cli.KeepAliveOnce(ctx, lease); err != nil {
			return false, fmt.Errorf("renewing the upgrade lock: %w", err)
		}
		return false, nil
	}
	l, err := cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return false, fmt.Errorf("granting a lease for the upgrade lock: %w", err)
	}
	v, _ := json.Marshal(Holder{Holder: holder, Since: time.Now().UTC().Truncate(time.Second)})
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(LockKey), "=", 0)).
		Then(clientv3.OpPut(LockKey, string(v), clientv3.WithLease(l.ID))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("taking the upgrade lock: %w", err)
	}
	if !resp.Succeeded {
		cli.Revoke(ctx, l.ID)
		return lock(ctx, cli, holder, ttl) // taken meanwhile: say by whom (or ours)
	}
	return true, nil
}

func current(ctx context.Context, cli *clientv3.Client) (*Holder, clientv3.LeaseID, error) {
	resp, err := cli.Get(ctx, LockKey)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the upgrade lock: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var h Holder
	if err := json.Unmarshal(resp.Kvs[0].Value, &h); err != nil || h.Holder == "" {
		return &Holder{Holder: fmt.Sprintf("an unknown holder (%q)", resp.Kvs[0].Value)}, clientv3.LeaseID(resp.Kvs[0].Lease), nil
	}
	return &h, clientv3.LeaseID(resp.Kvs[0].Lease), nil
}

// unlock deletes the lock if holder has it.
func unlock(ctx context.Context, cli *clientv3.Client, holder string) error {
	cur, lease, err := current(ctx, cli)
	if err != nil || cur == nil || cur.Holder != holder {
		return err
	}
	resp, err := cli.Get(ctx, LockKey)
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	if _, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(LockKey), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(LockKey)).Commit(); err != nil {
		return fmt.Errorf("releasing the upgrade lock: %w", err)
	}
	if lease != 0 {
		cli.Revoke(ctx, lease)
	}
	return nil
}

// Release gives the lock up once o.Member is healthy again and every
// member reads; until then it fails with ErrNotHealthy and keeps the lock.
// Releasing a lock holder does not hold is a no-op.
func Release(ctx context.Context, o Options, holder string) (*Report, error) {
	o.defaults()
	cli, err := o.client(o.Endpoints)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	cur, _, err := current(ctx, cli)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	if cur == nil || cur.Holder != holder {
		return nil, nil
	}
	r, err := check(ctx, cli, o)
	if err != nil && r == nil {
		return nil, fmt.Errorf("%w: %w", ErrNotHealthy, err)
	}
	for _, m := range r.Members {
		if !m.Healthy || m.Learner {
			return r, fmt.Errorf("%w: member %s: %s; the upgrade lock is kept", ErrNotHealthy, cmp.Or(m.Name, "(unnamed)"), cmp.Or(m.Error, "a learner"))
		}
	}
	return r, unlock(ctx, cli, holder)
}

// Held returns the lock's holder, nil when free.
func Held(ctx context.Context, o Options) (*Holder, error) {
	o.defaults()
	cli, err := o.client(o.Endpoints)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	h, _, err := current(ctx, cli)
	return h, err
}
