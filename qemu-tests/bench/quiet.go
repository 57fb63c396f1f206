package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// pidSet is the QEMU processes this program started.
type pidSet struct {
	mu sync.Mutex
	m  map[int]bool
}

var ours = &pidSet{m: map[int]bool{}}

func (s *pidSet) add(pid int)    { s.mu.Lock(); s.m[pid] = true; s.mu.Unlock() }
func (s *pidSet) remove(pid int) { s.mu.Lock(); delete(s.m, pid); s.mu.Unlock() }
func (s *pidSet) has(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[pid]
}

// foreignQEMU lists the QEMU processes (pgrep -a qemu-system) that this
// program did not start: other engineers' VM tests on the same machine.
func foreignQEMU() []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []string
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || ours.has(pid) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		cmd := strings.Join(args, " ")
		if len(cmd) > 100 {
			cmd = cmd[:100] + "…"
		}
		out = append(out, fmt.Sprintf("%d %s", pid, cmd))
	}
	sort.Strings(out)
	return out
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// guestSlots are the machine's guest slots, all held by the bench while it
// runs; every guest it boots runs in them.
var guestSlots *vm.Held

// watch samples, every 2 s, the other QEMU processes and the load average,
// so that each figure can say whether it was measured on a quiet machine.
type watch struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
}

type sample struct {
	at      time.Time
	foreign []string
	load    string
}

func startWatch() *watch {
	w := &watch{stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			w.mu.Lock()
			w.samples = append(w.samples, sample{time.Now(), foreignQEMU(), loadAvg()})
			w.mu.Unlock()
			select {
			case <-t.C:
			case <-w.stop:
				return
			}
		}
	}()
	return w
}

// during says what else ran between from and to: "" on a quiet machine.
func (w *watch) during(from, to time.Time) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	busy, n := 0, 0
	seen := map[string]bool{}
	for _, s := range w.samples {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		n++
		if len(s.foreign) > 0 {
			busy++
			for _, f := range s.foreign {
				seen[strings.Fields(f)[0]] = true
			}
		}
	}
	if busy == 0 {
		return ""
	}
	var pids []string
	for p := range seen {
		pids = append(pids, p)
	}
	sort.Strings(pids)
	return fmt.Sprintf("under load: other QEMU processes (pid %s) ran during %d of %d samples", strings.Join(pids, ", "), busy, n)
}
