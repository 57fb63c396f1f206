package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A TCG guest keeps one host core busy, so the machine runs no more guests
// at once than it has cores, whatever started them (two go test processes,
// the demo, the bench): each guest holds a slot, an flock on one of N lock
// files in a directory every process shares. The lock goes with the open
// file, which QEMU inherits, so a slot is free exactly when both the
// process that took it and its guest have let go of it.

// SlotDirEnv and SlotsEnv override the lock directory and the number of
// slots (default: /run/lock/stagehand-vm and the number of host cores).
const (
	SlotDirEnv = "STAGEHAND_VM_LOCKDIR"
	SlotsEnv   = "STAGEHAND_VM_SLOTS"
)

// Slots is a machine-wide pool of guest slots.
type Slots struct {
	Dir string // lock files slot-0 … slot-(N-1)
	N   int
}

// DefaultSlots is the pool every VM of the project shares.
func DefaultSlots() Slots {
	s := Slots{Dir: "/run/lock/stagehand-vm", N: runtime.NumCPU()}
	if d := os.Getenv(SlotDirEnv); d != "" {
		s.Dir = d
	}
	if n, err := strconv.Atoi(os.Getenv(SlotsEnv)); err == nil && n > 0 {
		s.N = n
	}
	return s
}

// Held is a set of slots taken by one guest.
type Held struct {
	files []*os.File
}

// Files are the open lock files, for the guest to inherit.
func (h *Held) Files() []*os.File { return h.files }

// Release lets go of the slots (the guest may still hold them until it
// exits, if it inherited the files).
func (h *Held) Release() {
	for _, f := range h.files {
		f.Close()
	}
	h.files = nil
}

// Acquire takes n slots (at most s.N), all at once or none, waiting until
// they are free or ctx ends. who is written into each lock file so that a
// process that waits can say what it waits for; logf hears, once and then
// every minute, that this guest waits and for whom.
func (s Slots) Acquire(ctx context.Context, n int, who string, logf func(string, ...any)) (*Held, error) {
	n = max(1, min(n, s.N))
	if err := os.MkdirAll(s.Dir, 0o1777); err != nil {
		return nil, fmt.Errorf("vm: guest slots: %w (set %s to a writable directory)", err, SlotDirEnv)
	}
	start := time.Now()
	var said time.Time
	for {
		h, err := s.try(n, who)
		if err != nil || h != nil {
			return h, err
		}
		if time.Since(said) >= time.Minute {
			logf("vm: %s waits for %d of %d guest slots (%s, waited %s): held by %s",
				who, n, s.N, s.Dir, time.Since(start).Round(time.Second), strings.Join(s.holders(), "; "))
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: waiting for a guest slot: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// try takes n free slots, or none (nil, nil).
func (s Slots) try(n int, who string) (*Held, error) {
	h := &Held{}
	for i := 0; i < s.N && len(h.files) < n; i++ {
		f, err := os.OpenFile(s.path(i), os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			h.Release()
			return nil, fmt.Errorf("vm: guest slot: %w (set %s to a writable directory)", err, SlotDirEnv)
		}
		if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			h.Release()
			return nil, fmt.Errorf("vm: locking %s: %w", f.Name(), err)
		}
		f.Truncate(0)
		f.WriteAt([]byte(fmt.Sprintf("pid %d: %s\n", os.Getpid(), who)), 0)
		h.files = append(h.files, f)
	}
	if len(h.files) < n {
		h.Release()
		return nil, nil
	}
	return h, nil
}

func (s Slots) path(i int) string { return filepath.Join(s.Dir, fmt.Sprintf("slot-%d", i)) }

// holders says who holds each busy slot, from the lock files.
func (s Slots) holders() []string {
	var out []string
	for i := 0; i < s.N; i++ {
		f, err := os.Open(s.path(i))
		if err != nil {
			continue
		}
		busy := flock(f, unix.LOCK_SH|unix.LOCK_NB) != nil
		b, _ := os.ReadFile(f.Name())
		// A holder writes its name just after it takes the lock: give it
		// a moment rather than name nobody.
		for try := 0; busy && len(bytes.TrimSpace(b)) == 0 && try < 20; try++ {
			time.Sleep(10 * time.Millisecond)
			b, _ = os.ReadFile(f.Name())
		}
		f.Close()
		if busy {
			out = append(out, fmt.Sprintf("slot %d: %s", i, strings.TrimSpace(string(b))))
		}
	}
	return out
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}
