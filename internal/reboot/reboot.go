package reboot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoInit marks a host root in which neither systemd nor a reboot
// command was found: the host cannot be rebooted cleanly from here.
var ErrNoInit = errors.New("no way to reboot the host through its init system")

// Where systemctl and the reboot commands may lie, inside the root.
var (
	systemctlPaths = []string{"/usr/bin/systemctl", "/bin/systemctl", "/usr/sbin/systemctl", "/sbin/systemctl"}
	rebootPaths    = []string{"/sbin/reboot", "/usr/sbin/reboot", "/bin/reboot", "/usr/bin/reboot"}
)

// systemdDir exists while systemd runs (sd_booted(3)).
const systemdDir = "/run/systemd/system"

// Machine is a system to reboot. The zero Machine is this one: systemctl
// when systemd runs, else the init system's reboot command (busybox,
// sysvinit, OpenRC: it asks init), and only without either, or as PID 1,
// the reboot syscall, which leaves every file system mounted and dirty.
type Machine struct {
	// HostRoot, when set, is the host's root as a container sees it (SUC
	// mounts it at /host): systemd and the reboot commands are looked up
	// in it and run chrooted into it, and reboot(2) is never used, as it
	// would reset the host with its file systems mounted.
	HostRoot string

	// Run runs argv, an absolute path inside root ("" for this system's
	// root); default exec with root as the child's root directory.
	Run func(ctx context.Context, root string, argv []string) ([]byte, error)
	// Syscall is reboot(2); default unix.Reboot.
	Syscall func() error
	// PID is this process's ID; default os.Getpid().
	PID int
}

// Way is how a Machine reboots: Argv run inside Root, or reboot(2) when
// Argv is empty.
type Way struct {
	Root string
	Argv []string
	Init string // "systemd", "the init system", or "" for reboot(2)
}

func (w Way) String() string {
	if len(w.Argv) == 0 {
		return "reboot(2)"
	}
	s := strings.Join(w.Argv, " ")
	if w.Root != "" {
		s = "chroot " + w.Root + " " + s
	}
	return fmt.Sprintf("%s (%s)", w.Init, s)
}

// Find says how m reboots, or fails with ErrNoInit for a host root with no
// init system to ask.
func (m Machine) Find() (Way, error) {
	root := m.HostRoot
	if root != "" {
		if _, err := os.Stat(filepath.Join(root, systemdDir)); err == nil {
			if p := lookup(root, systemctlPaths); p != "" {
				return Way{Root: root, Argv: []string{p, "reboot"}, Init: "systemd"}, nil
			}
		}
		if p := lookup(root, rebootPaths); p != "" {
			return Way{Root: root, Argv: []string{p}, Init: "the init system"}, nil
		}
		return Way{}, fmt.Errorf("%w: neither systemd (%s, systemctl) nor a reboot command (%s) in the host root %s",
			ErrNoInit, systemdDir, strings.Join(rebootPaths, ", "), root)
	}
	if _, err := os.Stat(systemdDir); err == nil {
		return Way{Argv: []string{"systemctl", "reboot"}, Init: "systemd"}, nil
	}
	pid := m.PID
	if pid == 0 {
		pid = os.Getpid()
	}
	if pid != 1 {
		if p := lookup("/", rebootPaths); p != "" {
			return Way{Argv: []string{p}, Init: "the init system"}, nil
		}
	}
	return Way{}, nil
}

// lookup returns the first of paths that is an executable file inside
// root, symbolic links resolved inside root too (an absolute link in the
// host's /sbin points into the host, not into this container).
func lookup(root string, paths []string) string {
	for _, p := range paths {
		real, err := resolveIn(root, p)
		if err != nil {
			continue
		}
		if fi, err := os.Stat(filepath.Join(root, real)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// resolveIn resolves the symbolic links of p, an absolute path, as if root
// were "/", and returns the path inside root.
func resolveIn(root, p string) (string, error) {
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	cur := "/"
	for links := 0; len(parts) > 0; {
		next := filepath.Join(cur, parts[0])
		parts = parts[1:]
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", unix.ELOOP
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(cur, target)
		}
		parts = append(strings.Split(strings.TrimPrefix(filepath.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return cur, nil
}

// Reboot syncs, then reboots m the way Find says; logf (nil: none) says
// which way first.
func (m Machine) Reboot(ctx context.Context, logf func(string, ...any)) error {
	w, err := m.Find()
	if err != nil {
		return err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	unix.Sync()
	if len(w.Argv) == 0 {
		logf("rebooting")
		sys := m.Syscall
		if sys == nil {
			sys = func() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) }
		}
		if err := sys(); err != nil {
			return fmt.Errorf("reboot: %w", err)
		}
		return nil
	}
	if w.Init == "systemd" {
		logf("rebooting through systemd")
	} else {
		logf("rebooting through the init system (%s)", w.Argv[0])
	}
	run := m.Run
	if run == nil {
		run = runIn
	}
	if out, err := run(ctx, w.Root, w.Argv); err != nil {
		return fmt.Errorf("%s: %v: %s", w, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runIn runs argv with root as its root directory (none when "").
func runIn(ctx context.Context, root string, argv []string) ([]byte, error) {
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if root != "" {
		// The path is the host's: no lookup in this container's PATH.
		c.Path = argv[0]
		c.Dir = "/"
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	return c.CombinedOutput()
}
