package etcdguard_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/fleet/etcdguard"
	"github.com/stagehand-dev/stagehand/fleet/kubetest"
)

func opts(e *kubetest.Etcd, member string) etcdguard.Options {
	return etcdguard.Options{Endpoints: e.Endpoints(), Member: member, ReadTimeout: 3 * time.Second, DialTimeout: 2 * time.Second}
}

// TestCheck runs the rules against real etcd clusters on 127.0.0.1.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		members int
		change  func(e *kubetest.Etcd)
		member  string
		refused string // "" when allowed
	}{
		{"healthy 3 members", 3, nil, "m0", ""},
		{"one member stopped", 3, func(e *kubetest.Etcd) { e.Stop(2) }, "m0", "member m2 is unhealthy"},
		{"the member itself stopped", 3, func(e *kubetest.Etcd) { e.Stop(0) }, "m0", "member m0 is unhealthy"},
		{"2-member cluster", 2, nil, "m0", "a 2-member cluster loses quorum"},
		{"single member", 1, nil, "m0", "0 healthy of 1 voting members are left, fewer than a quorum of 1"},
		{"a learner", 3, func(e *kubetest.Etcd) { e.AddLearner(); e.WaitHealthy() }, "m0", "member m3 is a learner"},
		{"a member not started", 3, func(e *kubetest.Etcd) { e.AddUnstarted() }, "m0", "has not started"},
		{"no such member", 3, nil, "cp-9", `no etcd member is named "cp-9"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := kubetest.StartEtcd(t, tc.members)
			o := opts(e, tc.member)
			if tc.change != nil {
				tc.change(e)
			}
			r, err := etcdguard.Check(ctx, o)
			if tc.refused == "" {
				if err != nil {
					t.Fatalf("refused a healthy cluster: %v", err)
				}
				if r.Voters != tc.members || r.Quorum != tc.members/2+1 || r.HealthyAfter != tc.members-1 {
					t.Errorf("report %+v", r)
				}
				return
			}
			if !errors.Is(err, etcdguard.ErrRefused) || !strings.Contains(err.Error(), tc.refused) {
				t.Fatalf("got %v, want a refusal saying %q", err, tc.refused)
			}
		})
	}
}

// TestLock: one holder at a time, held across runs of the same holder,
// released only once the cluster is whole, taken over after its TTL.
func TestLock(t *testing.T) {
	ctx := context.Background()
	e := kubetest.StartEtcd(t, 3)
	o0, o1 := opts(e, "m0"), opts(e, "m1")
	if _, err := etcdguard.Acquire(ctx, o0, "cp-0", time.Hour); err != nil {
		t.Fatal(err)
	}
	_, err := etcdguard.Acquire(ctx, o1, "cp-1", time.Hour)
	if !errors.Is(err, etcdguard.ErrHeld) || !strings.Contains(err.Error(), "held by cp-0") {
		t.Fatalf("second holder: %v, want held by cp-0", err)
	}
	// After cp-0's reboot its agent runs again: the lock is still its own.
	if _, err := etcdguard.Acquire(ctx, o0, "cp-0", time.Hour); err != nil {
		t.Fatalf("the same holder again: %v", err)
	}
	// cp-0's member is down (rebooting): the lock is kept.
	e.Stop(0)
	o0.Endpoints = e.Endpoints()
	if _, err := etcdguard.Release(ctx, o0, "cp-0"); !errors.Is(err, etcdguard.ErrNotHealthy) {
		t.Fatalf("release with m0 down: %v, want ErrNotHealthy", err)
	}
	if h, err := etcdguard.Held(ctx, o0); err != nil || h == nil || h.Holder != "cp-0" {
		t.Fatalf("holder after a refused release: %+v, %v", h, err)
	}
	e.Start(0)
	e.WaitHealthy()
	o0.Endpoints = e.Endpoints()
	if _, err := etcdguard.Release(ctx, o0, "cp-0"); err != nil {
		t.Fatalf("release once healthy: %v", err)
	}
	if h, err := etcdguard.Held(ctx, o0); err != nil || h != nil {
		t.Fatalf("after release: %+v, %v", h, err)
	}
	// A refusal by the rules gives the lock back.
	e.Stop(2)
	if _, err := etcdguard.Acquire(ctx, o1, "cp-1", time.Hour); !errors.Is(err, etcdguard.ErrRefused) {
		t.Fatalf("acquire with m2 down: %v", err)
	}
	if h, _ := etcdguard.Held(ctx, o1); h != nil {
		t.Fatalf("a refused acquire kept the lock: %+v", h)
	}
	e.Start(2)
	e.WaitHealthy()

	// A holder gone for longer than the TTL loses it.
	if _, err := etcdguard.Acquire(ctx, o1, "cp-1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := etcdguard.Acquire(ctx, o0, "cp-0", time.Hour)
		if err == nil {
			break
		}
		if !errors.Is(err, etcdguard.ErrHeld) || time.Now().After(deadline) {
			t.Fatalf("taking over a lapsed lock: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestTwoGuardsAtOnce: of guards started together, exactly one holds the
// lock and the others name it.
func TestTwoGuardsAtOnce(t *testing.T) {
	e := kubetest.StartEtcd(t, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = etcdguard.Acquire(context.Background(), opts(e, e.Members[i].Name), "cp-"+e.Members[i].Name, time.Hour)
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, etcdguard.ErrHeld):
			t.Errorf("guard %d: %v, want ErrHeld", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d guards hold the lock: %v", won, errs)
	}
}

// TestUnreachable: no etcd answers: an error naming the endpoint, bounded.
func TestUnreachable(t *testing.T) {
	o := etcdguard.Options{Endpoints: []string{"http://127.0.0.1:1"}, Member: "m0", ReadTimeout: 2 * time.Second, DialTimeout: time.Second}
	start := time.Now()
	_, err := etcdguard.Check(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("took %s", d)
	}
}
