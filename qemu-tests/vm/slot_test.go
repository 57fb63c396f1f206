package vm

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlotsThirdWaits: three guests ask at once for a slot of a pool of
// two; two get one, the third waits, says so, and gets the first one
// released.
func TestSlotsThirdWaits(t *testing.T) {
	s := Slots{Dir: t.TempDir(), N: 2}
	var mu sync.Mutex
	var said []string
	logf := func(f string, a ...any) { mu.Lock(); said = append(said, fmt.Sprintf(f, a...)); mu.Unlock() }

	got := make(chan *Held, 3)
	for i := range 3 {
		go func() {
			h, err := s.Acquire(context.Background(), 1, fmt.Sprintf("guest %d", i), logf)
			if err != nil {
				t.Error(err)
			}
			got <- h
		}()
	}
	first, second := <-got, <-got
	select {
	case h := <-got:
		t.Fatalf("a third guest got a slot of two while both were held: %v", h.Files())
	case <-time.After(time.Second):
	}
	mu.Lock()
	if len(said) != 1 || !strings.Contains(said[0], "waits for 1 of 2 guest slots") || !strings.Contains(said[0], "slot 0: pid") {
		t.Errorf("the waiting guest said %q; want one line that it waits, naming the holders", said)
	}
	mu.Unlock()
	first.Release()
	select {
	case third := <-got:
		third.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the third guest did not get the slot the first released")
	}
	second.Release()
}

// TestSlotsAllOrNothing: a request for more slots than are free takes none
// (no guest holds part of what it needs while another waits for the rest).
func TestSlotsAllOrNothing(t *testing.T) {
	s := Slots{Dir: t.TempDir(), N: 2}
	one, err := s.Acquire(context.Background(), 1, "one", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if h, err := s.Acquire(ctx, AllSlots, "all", t.Logf); err == nil {
		h.Release()
		t.Fatal("took every slot while one was held")
	}
	if h, err := s.try(1, "other"); err != nil || h == nil {
		t.Fatalf("the free slot was left locked by the request that gave up: %v, %v", h, err)
	} else {
		h.Release()
	}
	one.Release()
	all, err := s.Acquire(context.Background(), AllSlots, "all", t.Logf)
	if err != nil || len(all.Files()) != 2 {
		t.Fatalf("every slot free, Acquire(all) = %v, %v", all, err)
	}
	all.Release()
}

// TestSlotHeldByChild: the slot goes with its lock file, which the guest
// inherits: it stays busy while the child runs after the parent let go,
// and is free once the child is gone.
func TestSlotHeldByChild(t *testing.T) {
	s := Slots{Dir: t.TempDir(), N: 1}
	h, err := s.Acquire(context.Background(), 1, "child", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	g, err := start(exec.Command("sleep", "60"), h, false)
	if err != nil {
		t.Fatal(err)
	}
	h.Release()
	if h2, _ := s.try(1, "other"); h2 != nil {
		h2.Release()
		t.Fatal("the slot was free while the child holding it ran")
	}
	g.Cmd.Process.Kill()
	<-g.Exited
	h2, err := s.try(1, "other")
	if err != nil || h2 == nil {
		t.Fatalf("the slot stayed busy after its child exited: %v", err)
	}
	h2.Release()
}
