package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Firmware is an OVMF build: read-only code and a template of the variable
// store, which each machine copies; or, with no Vars, a legacy BIOS image
// (SeaBIOS), which keeps no variables.
type Firmware struct {
	Code       string
	Vars       string
	SecureBoot bool // the build enforces Secure Boot: SMM and a secure flash
}

// BIOS tells a legacy BIOS from a UEFI firmware.
func (f Firmware) BIOS() bool { return f.Vars == "" }

// OVMF is Debian's ovmf package (4 MiB flash, no Secure Boot).
var OVMF = Firmware{Code: "/usr/share/OVMF/OVMF_CODE_4M.fd", Vars: "/usr/share/OVMF/OVMF_VARS_4M.fd"}

// OVMFSecureBoot is Debian's ovmf build with Secure Boot enforced: its
// variable store enrolls the snakeoil test key (PK, KEK and db;
// /usr/share/ovmf/PkKek-1-snakeoil.key). It needs SMM (Machine.Args adds
// it and the secure flash).
var OVMFSecureBoot = Firmware{Code: "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd", Vars: "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd", SecureBoot: true}

// SeaBIOS is Debian's seabios package: QEMU's own legacy BIOS, named
// explicitly so that a missing file fails the test rather than QEMU
// picking something else.
var SeaBIOS = Firmware{Code: "/usr/share/seabios/bios-256k.bin"}

// QEMU is the emulator binary.
const QEMU = "qemu-system-x86_64"

// Fix is what to run when something the VM tests need is missing.
const Fix = "run 'make deps' as root (scripts/vm-deps.sh)"

// CheckHost says what the host lacks to run VMs.
func CheckHost(fw Firmware) error {
	if _, err := exec.LookPath(QEMU); err != nil {
		return fmt.Errorf("%s is not installed: %s", QEMU, Fix)
	}
	for _, f := range []string{fw.Code, fw.Vars} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("firmware %s is missing: %s", f, Fix)
		}
	}
	return nil
}

// Config describes a machine.
type Config struct {
	Dir      string   // per-machine directory: variable store and console logs
	Disk     string   // raw disk image, attached as virtio-blk
	Firmware Firmware // zero: OVMF
	MemoryMB int      // zero: 1024
	CPUs     int      // zero: 1
	Args     []string // more QEMU arguments
	// WriteLog, when set, is a file QEMU's blklogwrites driver logs every
	// write and flush the guest makes to Disk into (dm-log-writes v1, see
	// qemu-tests/writelog), with the disk's volatile write cache on so
	// that the guest's flushes reach the log. It is emptied at each Start.
	WriteLog string
	// Slots is how many of the machine-wide guest slots (one a host core,
	// see Launch) a boot holds: zero is one; the bench takes them all so
	// that nothing else runs beside what it measures.
	Slots int
	// Held, when set, are slots the caller holds for all its boots
	// (the bench: nothing runs beside it); Slots is then unused.
	Held *Held
	// Logf hears that a boot waits for a slot; zero: standard error.
	Logf func(format string, args ...any)
	// TPM, when set, gives the machine a TPM 2.0 (swtpm).
	TPM *TPM
}

// AllSlots, as Config.Slots, takes every guest slot of the machine.
const AllSlots = 1 << 10

// Marker is in the command line of every QEMU the project starts (its
// -name), so that a guest left running from an earlier run can be named.
const Marker = "stagehand-vm"

// Machine is one VM, booted any number of times in a row; its disk and its
// firmware variables persist across boots, as on real hardware.
type Machine struct {
	cfg   Config
	vars  string
	boots int
}

// New prepares a machine: it copies the firmware's variable store into
// cfg.Dir.
func New(cfg Config) (*Machine, error) {
	if cfg.Firmware == (Firmware{}) {
		cfg.Firmware = OVMF
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Logf == nil {
		cfg.Logf = stderrf
	}
	if err := CheckHost(cfg.Firmware); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Disk); err != nil {
		return nil, fmt.Errorf("vm: disk image: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	if cfg.Firmware.BIOS() {
		return &Machine{cfg: cfg}, nil
	}
	vars := filepath.Join(cfg.Dir, "OVMF_VARS.fd")
	b, err := os.ReadFile(cfg.Firmware.Vars)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	if err := os.WriteFile(vars, b, 0o644); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	return &Machine{cfg: cfg, vars: vars}, nil
}

// Vars is the machine's firmware variable store; "" under a legacy BIOS.
func (m *Machine) Vars() string { return m.vars }

// Args returns the QEMU command line of the machine.
func (m *Machine) Args() []string {
	machine := []string{"-machine", "q35"}
	if m.cfg.Firmware.SecureBoot {
		// OVMF's Secure Boot builds keep their variables in SMM, and
		// only a secure flash keeps the OS from writing them directly.
		machine = []string{"-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"}
	}
	args := append(machine,
		"-accel", "tcg", "-cpu", "max",
		"-m", fmt.Sprint(m.cfg.MemoryMB), "-smp", fmt.Sprint(m.cfg.CPUs),
		"-name", Marker+",process="+Marker,
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-nic", "none",
	)
	if m.cfg.Firmware.BIOS() {
		args = append(args, "-bios", m.cfg.Firmware.Code)
	} else {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OptValue(m.cfg.Firmware.Code),
			"-drive", "if=pflash,format=raw,unit=1,file="+OptValue(m.vars))
	}
	if m.cfg.WriteLog != "" {
		// NOTES.md: no cache.no-flush on the blklogwrites node (it would
		// hide the flushes), no discard or write-zeroes requests (logged
		// without data), the superblock's count updated at every entry.
		args = append(args,
			"-blockdev", "driver=file,node-name=img,filename="+OptValue(m.cfg.Disk),
			"-blockdev", "driver=file,node-name=log,filename="+OptValue(m.cfg.WriteLog),
			"-blockdev", "driver=blklogwrites,node-name=disk0,file=img,log=log,log-sector-size=512,log-super-update-interval=1",
			"-device", "virtio-blk-pci,drive=disk0,write-cache=on,discard=off,write-zeroes=off")
	} else {
		args = append(args,
			"-drive", "if=none,id=disk0,format=raw,file="+OptValue(m.cfg.Disk),
			"-device", "virtio-blk-pci,drive=disk0")
	}
	args = append(args, "-serial", "stdio")
	return append(args, m.cfg.Args...)
}

// OptValue escapes a value, a path, for a QEMU option list
// ("file=PATH,..."), where a comma ends the value unless doubled: a test
// named "a, b" has one in its directories.
func OptValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// Start boots the machine and returns the running boot, once it holds a
// guest slot (Launch). The console goes to Dir/console-N.log (N counting
// the machine's boots from 1).
func (m *Machine) Start() (*Run, error) {
	if m.cfg.WriteLog != "" {
		if err := os.WriteFile(m.cfg.WriteLog, nil, 0o644); err != nil {
			return nil, fmt.Errorf("vm: emptying the write log: %w", err)
		}
	}
	m.boots++
	log := filepath.Join(m.cfg.Dir, fmt.Sprintf("console-%d.log", m.boots))
	lf, err := os.Create(log)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("vm: %w", err)
	}
	args := m.Args()
	stopTPM := func() {}
	if m.cfg.TPM != nil {
		tpmArgs, stop, err := m.cfg.TPM.qemuArgs()
		if err != nil {
			pr.Close()
			pw.Close()
			lf.Close()
			return nil, err
		}
		args, stopTPM = append(args, tpmArgs...), stop
	}
	cmd := exec.Command(QEMU, args...)
	cmd.Stdout, cmd.Stderr = pw, pw // QEMU's own complaints go to the log too
	var g *Guest
	if m.cfg.Held != nil {
		g, err = StartHeld(cmd, m.cfg.Held)
	} else {
		g, err = Launch(context.Background(), cmd, max(1, m.cfg.Slots), fmt.Sprintf("boot %d of %s", m.boots, m.cfg.Dir), m.cfg.Logf)
	}
	pw.Close()
	if err != nil {
		stopTPM()
		pr.Close()
		lf.Close()
		return nil, err
	}
	r := &Run{guest: g, log: log, logFile: lf, start: time.Now(), exited: make(chan struct{}), changed: make(chan struct{})}
	go r.read(pr)
	go func() { <-r.exited; stopTPM() }()
	return r, nil
}

// Run is one boot of a machine, from power on to QEMU's exit.
type Run struct {
	guest   *Guest
	log     string
	logFile *os.File
	start   time.Time

	mu      sync.Mutex
	buf     []byte
	pos     int           // where the next Expect starts looking
	changed chan struct{} // closed and replaced when buf grows or QEMU exits
	exited  chan struct{} // closed when QEMU has exited
	waitErr error
}

func (r *Run) read(out *os.File) {
	b := make([]byte, 32<<10)
	for {
		n, err := out.Read(b)
		if n > 0 {
			r.logFile.Write(b[:n])
			r.mu.Lock()
			r.buf = append(r.buf, b[:n]...)
			close(r.changed)
			r.changed = make(chan struct{})
			r.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	out.Close()
	<-r.guest.Exited
	r.logFile.Close()
	r.mu.Lock()
	r.waitErr = r.guest.Err
	close(r.exited)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Log is the path of the console log.
func (r *Run) Log() string { return r.log }

// Console returns the console output so far.
func (r *Run) Console() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.buf)
}

// Elapsed is the time since QEMU started.
func (r *Run) Elapsed() time.Duration { return time.Since(r.start) }

// Pid is QEMU's process id.
func (r *Run) Pid() int { return r.guest.Cmd.Process.Pid }

// ErrPanic is returned by Expect when the guest kernel panicked.
var ErrPanic = errors.New("the guest kernel panicked")

// ErrExited is returned by Expect when QEMU exited before the match.
var ErrExited = errors.New("QEMU exited")

var panicRE = regexp.MustCompile(`Kernel panic - not syncing[^\n]*`)

// Expect waits up to timeout for the console, after the previous match, to
// match re, and returns the submatches. Only complete lines are matched
// (while QEMU runs), so that a match never depends on how the output was
// cut: `slot=(\S*)` cannot match before the slot is printed. It fails early
// when the guest kernel panics or QEMU exits.
func (r *Run) Expect(ctx context.Context, timeout time.Duration, re *regexp.Regexp) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r.mu.Lock()
		rest := r.buf[r.pos:]
		changed, exited := r.changed, r.exited
		if !r.Exited() {
			rest = rest[:bytes.LastIndexByte(rest, '\n')+1]
		}
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			var subs []string
			for i := 0; i+1 < len(loc); i += 2 {
				if loc[i] < 0 {
					subs = append(subs, "")
				} else {
					subs = append(subs, string(rest[loc[i]:loc[i+1]]))
				}
			}
			r.pos += loc[1]
			r.mu.Unlock()
			return subs, nil
		}
		p := panicRE.Find(rest)
		r.mu.Unlock()
		if p != nil {
			return nil, fmt.Errorf("waiting for %q: %w: %s", re, ErrPanic, p)
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("waiting for %q: %w (%v) after %s", re, ErrExited, r.waitErr, r.Elapsed().Round(100*time.Millisecond))
		default:
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q: no match after %s (%s since power on)", re, timeout, r.Elapsed().Round(100*time.Millisecond))
		}
	}
}

// Wait waits up to timeout for QEMU to exit (the guest powered off) and
// returns its exit error.
func (r *Run) Wait(timeout time.Duration) error {
	select {
	case <-r.exited:
		return r.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("QEMU still running %s after power on (waited %s for it to exit)", r.Elapsed().Round(100*time.Millisecond), timeout)
	}
}

// Exited tells whether QEMU has exited.
func (r *Run) Exited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// Kill kills QEMU, by its pid, if it still runs, and waits for it.
func (r *Run) Kill() error {
	if r.Exited() {
		return nil
	}
	if err := r.guest.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing QEMU (pid %d): %w", r.Pid(), err)
	}
	select {
	case <-r.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("QEMU (pid %d) did not exit after SIGKILL", r.Pid())
	}
}

// Tail returns the last n lines of the console, for failure messages.
func (r *Run) Tail(n int) string {
	lines := strings.Split(r.Console(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
