//go:build vm

package vm

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes TestGuestDiesWithParent, run again as a child, a process
// that boots a guest in the directory it names and never ends it.
const helperEnv = "STAGEHAND_VM_DEATHSIG_HELPER"

// bootAndWait is the child's part: it boots OVMF on an empty disk in dir
// (the firmware finds nothing to boot and waits at the EFI shell's
// prompt, printing nothing more: the guest a closed console pipe never
// ends), prints QEMU's pid, and waits to be killed.
func bootAndWait(t *testing.T, dir string) {
	disk := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Dir: dir, Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Start()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("QEMU_PID=%d\n", r.Pid())
	select {}
}

// TestGuestDiesWithParent: the process that booted a guest is SIGKILLed,
// or ended by go test's -timeout; its guest must be gone a few seconds
// later. The child is this test binary running this test with helperEnv
// set, so that go test's own -timeout ends it.
func TestGuestDiesWithParent(t *testing.T) {
	if dir := os.Getenv(helperEnv); dir != "" {
		bootAndWait(t, dir)
		return
	}
	if err := CheckHost(OVMF); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		kill bool
	}{
		{"SIGKILL", nil, true},
		{"timeout", []string{"-test.timeout=20s"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestGuestDiesWithParent$", "-test.count=1"}, tc.args...)...)
			cmd.Env = append(os.Environ(), helperEnv+"="+t.TempDir())
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr // a timeout's panic: logged only on failure
			defer func() {
				if t.Failed() {
					t.Logf("the child's standard error:\n%s", stderr.String())
				}
			}()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			pids := make(chan int, 1)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if p, ok := strings.CutPrefix(sc.Text(), "QEMU_PID="); ok {
						n, _ := strconv.Atoi(p)
						pids <- n
					}
				}
				close(pids)
			}()
			var pid int
			select {
			case pid = <-pids:
			case <-time.After(3 * time.Minute):
				t.Fatal("the child never started its guest")
			}
			if pid == 0 {
				t.Fatal("the child ended before starting its guest")
			}
			time.Sleep(3 * time.Second) // the firmware runs
			if !alive(pid) {
				t.Fatalf("QEMU (pid %d) is not running while its parent is", pid)
			}
			if tc.kill {
				cmd.Process.Signal(syscall.SIGKILL)
			}
			werr := make(chan error, 1)
			go func() { werr <- cmd.Wait() }()
			select {
			case err := <-werr:
				if err == nil {
					t.Fatal("the child exited 0: it was to be killed")
				}
			case <-time.After(time.Minute):
				t.Fatal("the child did not end")
			}
			deadline := time.Now().Add(5 * time.Second)
			for alive(pid) {
				if time.Now().After(deadline) {
					syscall.Kill(pid, syscall.SIGKILL)
					t.Fatalf("QEMU (pid %d) still runs 5 s after the process that started it ended", pid)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// alive tells whether pid is a running stagehand guest (not gone, not a
// zombie waiting for a reaper).
func alive(pid int) bool {
	cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cl), Marker) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(st)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
