package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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

// TestArgsSecureBoot: a machine on OVMF's Secure Boot build gets SMM and a
// secure flash, with its code and its own copy of the variable store; one
// on plain OVMF gets neither. The disk is attached the same way on both.
func TestArgsSecureBoot(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		fw   Firmware
		want []string
		not  []string
	}{
		{OVMFSecureBoot, []string{"q35,smm=on", "driver=cfi.pflash01,property=secure,value=on", "readonly=on,file=" + OVMFSecureBoot.Code}, nil},
		{OVMF, []string{"q35", "readonly=on,file=" + OVMF.Code}, []string{"smm=on", "property=secure"}},
	} {
		m, err := New(Config{Dir: t.TempDir(), Disk: disk, Firmware: tc.fw})
		if err != nil {
			t.Fatalf("%s: %v", tc.fw.Code, err)
		}
		args := strings.Join(m.Args(), " ")
		for _, w := range append(tc.want, "file="+m.Vars(), "if=none,id=disk0,format=raw,file="+disk) {
			if !strings.Contains(args, w) {
				t.Errorf("%s: %q lacks %q", tc.fw.Code, args, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(args, n) {
				t.Errorf("%s: %q has %q", tc.fw.Code, args, n)
			}
		}
	}
}
