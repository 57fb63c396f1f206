package kexec

import (
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemFile(t *testing.T) {
	f, err := MemFile("kernel", strings.NewReader("bzImage bytes"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() != 13 {
		t.Fatalf("memfd: %v %v", st, err)
	}
	f.Seek(0, io.SeekStart)
	b, _ := io.ReadAll(f)
	if string(b) != "bzImage bytes" {
		t.Errorf("read back %q", b)
	}
}

// TestLoadRefusesGarbage loads a file that is no kernel: the kernel says
// ENOEXEC, which is not "unavailable" (a broken payload is the caller's
// error, not a reason to reboot through the firmware); without the right to
// kexec the error is ErrUnavailable with EPERM kept. Loading never touches
// the running system unless Exec is called.
func TestLoadRefusesGarbage(t *testing.T) {
	k, err := MemFile("kernel", strings.NewReader(strings.Repeat("not a kernel", 1000)))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	err = Load(k, nil, "console=ttyS0")
	if err == nil {
		t.Fatal("garbage loaded as a kernel")
	}
	switch {
	case errors.Is(err, unix.ENOEXEC):
		if errors.Is(err, ErrUnavailable) {
			t.Errorf("ENOEXEC reported as unavailable: %v", err)
		}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.ENOSYS):
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%v not reported as unavailable", err)
		}
	default:
		t.Errorf("unexpected error: %v", err)
	}
}

func TestLockdownMode(t *testing.T) {
	for in, want := range map[string]string{
		"[none] integrity confidentiality\n": "none",
		"none [integrity] confidentiality\n": "integrity",
		"none integrity [confidentiality]":   "confidentiality",
		"":                                   "",
		"none integrity":                     "",
	} {
		if got := lockdownMode(in); got != want {
			t.Errorf("lockdownMode(%q) = %q, want %q", in, got, want)
		}
	}
}
