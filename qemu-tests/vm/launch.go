package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
)

// Guest is a QEMU process started by Launch.
type Guest struct {
	Cmd    *exec.Cmd
	Exited chan struct{} // closed when QEMU has exited
	Err    error         // Wait's error, once Exited is closed
}

// Launch takes n guest slots from the machine-wide pool (waiting, and
// saying so through logf, while they are busy), then starts cmd so that it
// dies with this process: a parent-death signal (SIGKILL) set on a thread
// locked for as long as QEMU runs, since Linux sends it when the thread
// that forked the child ends, not the process. A guest stuck at a firmware
// prompt writes nothing more to its console, so a closed pipe would never
// end it; this does, also when the test binary is SIGKILLed or ended by
// go test's -timeout. cmd's output must be files or writers, not pipes
// from StdoutPipe: Wait runs on the locked thread.
func Launch(ctx context.Context, cmd *exec.Cmd, n int, who string, logf func(string, ...any)) (*Guest, error) {
	held, err := DefaultSlots().Acquire(ctx, n, who, logf)
	if err != nil {
		return nil, err
	}
	g, err := start(cmd, held, true)
	if err != nil {
		held.Release()
	}
	return g, err
}

// StartHeld starts cmd as Launch does, in slots the caller already holds
// (and keeps: they are not released when QEMU exits).
func StartHeld(cmd *exec.Cmd, held *Held) (*Guest, error) { return start(cmd, held, false) }

// start starts cmd in held, which it releases when QEMU exits if release.
func start(cmd *exec.Cmd, held *Held, release bool) (*Guest, error) {
	// QEMU inherits the slots' lock files: the slots stay busy while it
	// runs, even if this process were gone.
	cmd.ExtraFiles = append(cmd.ExtraFiles, held.Files()...)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	g := &Guest{Cmd: cmd, Exited: make(chan struct{})}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("vm: starting %s: %w", cmd.Path, err)
			return
		}
		started <- nil
		g.Err = cmd.Wait()
		if release {
			held.Release()
		}
		close(g.Exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return g, nil
}

// stderrf is the default for a machine's Logf.
func stderrf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
