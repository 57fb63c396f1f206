package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/efivar"
)

// StagerPath is where the test initramfs carries the stager binary.
const StagerPath = "/usr/bin/stager"

// stager runs the real stager with args, as a user of the running slot
// would, and prints each line of its output as it comes (a stager that
// reboots the machine has said what it did by then), then its exit
// status. On UEFI, efivarfs is mounted first: stager finds the boot disk
// and sets boot variables through it (a legacy BIOS has none).
func stager(args ...string) error {
	if err := waitDisks(10 * time.Second); err != nil {
		return err
	}
	if efivar.UEFIUnder("/") {
		if _, err := efiVars(); err != nil {
			return err
		}
	}
	cmd := exec.Command(StagerPath, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			say("stager %s: %s", args[0], sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("stager %s: %w", args[0], err)
	}
	return nil
}

// crash panics the kernel through sysrq; with panic=N on the command line
// the kernel resets the machine N seconds later, as a watchdog would.
func crash() error {
	unix.Sync()
	say("crashing the kernel (sysrq c)")
	return os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
}
