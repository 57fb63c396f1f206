// Command testos is the tiny OS that the VM tests boot in each slot: the
// /init of a slot's initramfs. It mounts /proc, /sys and /dev, loads the
// kernel modules its initramfs carries (in modules.dep order, with
// finit_module), prints one line saying which version, kernel and slot
// booted, runs the scenario steps given by stagehand.testos.steps=, and
// powers the machine off. In the pre-stage scenarios it is the /init that
// prestage hands off to, and its steps run the stager the initramfs
// carries at /usr/bin/stager (confirm, status, rollback, stage-reboot:REF),
// crash the kernel (panic), or hang under an armed watchdog (watchdog,
// hang); esp-hold mounts the ESP with the kernel's vfat and keeps files on
// it open, mount-images mounts the second disk holding installer images,
// iowatch prints the disk's write and flush counters as they change,
// secureboot the SecureBoot variable and the kernel's lockdown mode.
// Each step is announced ("step NAME: start") and its end said ("step
// NAME: ok" or "step NAME: error: ...").
//
// Its output starts with "stagehand-testos: " so that the tests can tell it
// from the kernel's.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/initramfs/kmod"
	"github.com/stagehand-dev/stagehand/meta"
)

// WatchdogTimeout is the timeout, in seconds, the watchdog step arms.
const WatchdogTimeout = 3

// VersionFile holds the version of the test OS, written into the initramfs
// by the test that builds it.
const VersionFile = "/etc/testos-version"

func say(format string, args ...any) {
	fmt.Printf("stagehand-testos: "+format+"\n", args...)
}

func main() {
	if filepath.Base(os.Args[0]) == "reboot" {
		// The init system's reboot command, as `stager --reboot` finds
		// it: ask init (PID 1, this program) to reboot, as busybox does.
		if err := unix.Kill(1, unix.SIGTERM); err != nil {
			fmt.Fprintf(os.Stderr, "reboot: signalling init: %v\n", err)
			os.Exit(1)
		}
		return
	}
	rebootOnSIGTERM()
	defer func() {
		if r := recover(); r != nil {
			say("panic: %v", r)
		}
		powerOff()
	}()
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && err != unix.EBUSY {
			say("error: mounting %s: %v", m.dst, err)
		}
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	if n, err := loadModules(release); err != nil {
		say("error: loading modules: %v", err)
	} else {
		say("loaded %d modules", n)
	}
	params := cmdline()
	version := "unknown"
	if b, err := os.ReadFile(VersionFile); err == nil {
		version = strings.TrimSpace(string(b))
	}
	say("version=%s uname=%s slot=%s", version, release, params["stagehand.slot"])
	if v, ok := params["stagehand.grub"]; ok {
		say("stagehand.grub=%s", v) // what GRUB chose, or the boot before a kexec
	}
	for _, step := range strings.Split(params["stagehand.testos.steps"], ",") {
		if step == "" {
			continue
		}
		// !STEP is a required health check: when it fails, the OS does
		// not go on (no confirm) and reboots, as stager check --reboot.
		step, required := strings.CutPrefix(step, "!")
		say("step %s: start", step)
		if err := run(step); err != nil {
			say("step %s: error: %v", step, err)
			if required {
				say("required step %s failed: rebooting", step)
				reboot()
				return
			}
		} else {
			say("step %s: ok", step)
		}
	}
	say("powering off")
}

// run runs one scenario step. Steps are added here as scenarios need them.
func run(step string) error {
	switch step {
	case "disks":
		return waitDisks(10 * time.Second)
	case "efivars":
		return showEFIVars()
	case "secureboot":
		return showSecureBoot()
	case "bootonce-a":
		return bootOnce(meta.SlotA)
	case "bootonce-b":
		return bootOnce(meta.SlotB)
	case "reboot":
		return reboot()
	case "confirm":
		return stager("confirm", "--disk", "/dev/vda")
	case "status":
		return stager("status")
	case "rollback":
		return stager("rollback", "--disk", "/dev/vda")
	case "watchdog":
		return watchdog(WatchdogTimeout)
	case "hang":
		hang()
	case "esp-hold":
		return holdESP()
	case "mount-images":
		return mountImages()
	case "iowatch":
		return ioWatch("vda")
	case "panic":
		return crash()
	case "tpm-unseal":
		return tpmUnseal()
	case "poweroff":
		say("powering off")
		powerOff()
		return nil
	}
	if v, ok := strings.CutPrefix(step, "oneshot:"); ok {
		return setOneShot(v)
	}
	if ref, ok := strings.CutPrefix(step, "stage-reboot:"); ok {
		return stageReboot(ref)
	}
	return fmt.Errorf("unknown step")
}

// waitDisks waits for a virtio disk and prints the disks seen.
func waitDisks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		disks, _ := filepath.Glob("/sys/block/vd*")
		if len(disks) > 0 {
			for i := range disks {
				disks[i] = filepath.Base(disks[i])
			}
			say("disks=%s", strings.Join(disks, ","))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no virtio disk after %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cmdline() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	params := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		params[k] = v
	}
	return params
}

// loadModules loads every module of /lib/modules/RELEASE/modules.dep,
// dependencies first; it returns how many it loaded (none when prestage
// loaded them all before).
func loadModules(release string) (int, error) {
	loaded, err := kmod.LoadAll(filepath.Join("/lib/modules", release))
	return len(loaded), err
}

func powerOff() {
	unix.Sync()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		say("error: reboot(POWER_OFF): %v", err)
		time.Sleep(time.Second)
	}
}
