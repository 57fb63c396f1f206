package vm

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"
)

// feed appends console output to r as the reader goroutine does.
func feed(r *Run, s string) {
	r.mu.Lock()
	r.buf = append(r.buf, s...)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func newRun() *Run {
	return &Run{start: time.Now(), changed: make(chan struct{}), exited: make(chan struct{})}
}

// TestExpectWholeLines: a line cut in two by the serial port is matched
// once it is whole, never on its first half.
func TestExpectWholeLines(t *testing.T) {
	r := newRun()
	re := regexp.MustCompile(`slot=(\S*)`)
	feed(r, "boot\r\nstagehand-testos: slot=")
	go func() {
		time.Sleep(50 * time.Millisecond)
		feed(r, "a\r\n")
	}()
	got, err := r.Expect(context.Background(), 5*time.Second, re)
	if err != nil || got[1] != "a" {
		t.Fatalf("Expect = %q, %v; want slot a", got, err)
	}
	// The next Expect starts after the match.
	feed(r, "slot=b\n")
	if got, _ := r.Expect(context.Background(), time.Second, re); got[1] != "b" {
		t.Errorf("second Expect = %q", got)
	}
}

func TestExpectFailsEarly(t *testing.T) {
	r := newRun()
	feed(r, "[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
	start := time.Now()
	if _, err := r.Expect(context.Background(), time.Minute, regexp.MustCompile("never")); !errors.Is(err, ErrPanic) {
		t.Errorf("Expect after a panic = %v, want ErrPanic", err)
	}
	r = newRun()
	close(r.exited)
	if _, err := r.Expect(context.Background(), time.Minute, regexp.MustCompile("never")); !errors.Is(err, ErrExited) {
		t.Errorf("Expect after QEMU exited = %v, want ErrExited", err)
	}
	if _, err := newRun().Expect(context.Background(), 100*time.Millisecond, regexp.MustCompile("never")); err == nil {
		t.Error("Expect without output succeeded")
	}
	if time.Since(start) > 10*time.Second {
		t.Error("Expect did not fail early")
	}
}
