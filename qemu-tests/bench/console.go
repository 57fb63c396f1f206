package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// line is one console line and when it reached the host, from power on.
type line struct {
	at   time.Duration
	text string
}

// power is one power-on of a machine: QEMU with the machine's arguments,
// its console read line by line and each line stamped with the host time
// it arrived (the harness's vm.Run keeps the bytes, not when they came).
type power struct {
	cmd     *exec.Cmd
	start   time.Time
	mu      sync.Mutex
	lines   []line
	next    int           // where wait looks from
	changed chan struct{} // closed and replaced when a line arrives or QEMU exits
	exited  chan struct{}
	err     error
}

// ansi matches terminal escapes (OVMF clears the screen) and CRs.
var ansi = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]|\r`)

// powerOn starts m, its console logged to logPath.
func powerOn(m *vm.Machine, logPath string) (*power, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	cmd := exec.Command(vm.QEMU, m.Args()...)
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &power{cmd: cmd, changed: make(chan struct{}), exited: make(chan struct{})}
	p.start = time.Now()
	g, err := vm.StartHeld(cmd, guestSlots)
	pw.Close()
	if err != nil {
		pr.Close()
		lf.Close()
		return nil, err
	}
	ours.add(cmd.Process.Pid)
	go func() {
		br := bufio.NewReaderSize(pr, 64<<10)
		for {
			s, err := br.ReadString('\n')
			at := time.Since(p.start)
			if s != "" {
				fmt.Fprintf(lf, "%8.3f %s", at.Seconds(), s)
				if !strings.HasSuffix(s, "\n") {
					fmt.Fprintln(lf)
				}
				p.mu.Lock()
				p.lines = append(p.lines, line{at, strings.TrimRight(ansi.ReplaceAllString(s, ""), "\n")})
				close(p.changed)
				p.changed = make(chan struct{})
				p.mu.Unlock()
			}
			if err != nil {
				break
			}
		}
		pr.Close()
		<-g.Exited
		werr := g.Err
		lf.Close()
		ours.remove(cmd.Process.Pid)
		p.mu.Lock()
		p.err = werr
		close(p.exited)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	return p, nil
}

// fatal matches the lines after which a boot goes nowhere: a kernel panic,
// an exception in the firmware (OVMF prints its registers and stops), the
// kernel's EFI stub failing (the firmware then falls to its shell).
var fatal = regexp.MustCompile(`Kernel panic - not syncing|^!!!! X64 Exception|EFI stub: ERROR`)

// wait waits up to timeout for a line after the last match to match re,
// and returns it with its submatches. It fails early on a fatal line or
// when QEMU exits.
func (p *power) wait(re *regexp.Regexp, timeout time.Duration) (line, []string, error) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for ; p.next < len(p.lines); p.next++ {
			l := p.lines[p.next]
			if m := re.FindStringSubmatch(l.text); m != nil {
				p.next++
				p.mu.Unlock()
				return l, m, nil
			}
			if fatal.MatchString(l.text) {
				p.mu.Unlock()
				return line{}, nil, fmt.Errorf("waiting for %q: %s", re, l.text)
			}
		}
		changed := p.changed
		select {
		case <-p.exited:
			p.mu.Unlock()
			return line{}, nil, fmt.Errorf("waiting for %q: QEMU exited (%v)", re, p.err)
		default:
		}
		p.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			return line{}, nil, fmt.Errorf("waiting for %q: no such line after %s", re, timeout)
		}
	}
}

// lines returns the console lines so far.
func (p *power) all() []line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]line(nil), p.lines...)
}

// off waits up to timeout for the guest to power off, then kills QEMU.
func (p *power) off(timeout time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing QEMU (pid %d): %w", p.cmd.Process.Pid, err)
	}
	select {
	case <-p.exited:
		return fmt.Errorf("the guest did not power off within %s: QEMU killed", timeout)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("QEMU (pid %d) did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}

// kernelTS matches a kernel console line's timestamp, seconds since the
// kernel started.
var kernelTS = regexp.MustCompile(`^\[\s*(\d+\.\d+)\]`)

// kernelStart estimates when, on the host clock since power on, the kernel
// whose lines are lines started: a line printed at kernel time ts reaches
// the host at start+ts plus the console's delay (large for the lines
// buffered before the serial console came up), so the smallest at-ts over
// its lines is the start. Under TCG the guest's clock runs at the host's:
// rate says how far it drifts, in host seconds per guest second from the
// line that gave the start (one that came without delay) to the last one.
func kernelStart(lines []line) (start time.Duration, rate float64, ok bool) {
	type stamped struct {
		at time.Duration
		ts float64
	}
	var ls []stamped
	best := -1
	for _, l := range lines {
		m := kernelTS.FindStringSubmatch(l.text)
		if m == nil {
			continue
		}
		ts, _ := strconv.ParseFloat(m[1], 64)
		s := l.at - time.Duration(ts*float64(time.Second))
		if best < 0 || s < start {
			start, best = s, len(ls)
		}
		ls = append(ls, stamped{l.at, ts})
	}
	if len(ls) < 2 {
		return 0, 0, false
	}
	first, last := ls[best], ls[len(ls)-1]
	if last.ts-first.ts < 0.5 {
		return start, 0, true
	}
	return start, (last.at - first.at).Seconds() / (last.ts - first.ts), true
}
