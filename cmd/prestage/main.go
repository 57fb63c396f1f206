// Command prestage is stagehand's pre-stage init: PID 1 of the initramfs
// (rdinit=/prestage). Before any filesystem is mounted it reads META; when
// an upgrade is staged it writes it to the inactive slot, arms a trial and
// kexecs into the new kernel; a trial that never confirmed is rolled back.
// Then, or on any error, it execs the OS's own init: it never leaves the
// machine without a way to boot.
//
// Kernel parameters: stagehand.slot=a|b (the slot this kernel came from),
// stagehand.next=PATH (init to exec, default /init), stagehand.kexec=0
// (reboot through the firmware instead of kexec), stagehand.modules=m1,m2
// (modules to load before looking for disks), stagehand.efivars=ro (never
// write the firmware's variables: for firmware that fails or worse on
// writes at run time; trials are then armed by the loader's default),
// stagehand.debug.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/go-kmsg"
	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/initramfs/kmod"
	"github.com/stagehand-dev/stagehand/kexec"
	"github.com/stagehand-dev/stagehand/meta"
)

// Bounds on the waits; past Deadline the init is handed off whatever
// prestage was doing (its writes are safe to cut).
const (
	diskWait = 15 * time.Second
	deadline = 5 * time.Minute
)

// modulesList names the modules the initramfs builder put in for prestage.
const modulesList = "/" + kmod.PrestageList

type prestage struct {
	start   time.Time
	peak    string // peak memory noted before /proc went away
	log     *log.Logger
	params  string
	mounted []string
	debug   bool
	last    time.Time     // when the last step logged by stepf ended
	read    time.Duration // reading the slot into memory for kexec_file_load
	handoff sync.Once
}

func main() {
	p := &prestage{start: time.Now(), log: log.New(os.Stderr, "stagehand: ", 0)}
	defer func() {
		if r := recover(); r != nil {
			p.logf("internal error, booting on: %v", r)
		}
		p.handOff()
	}()
	p.setup()
	time.AfterFunc(deadline, func() {
		p.logf("still busy after %s: handing off now (every write so far is safe to cut)", deadline)
		p.handOff()
	})
	d := p.run()
	p.act(d)
}

func (p *prestage) logf(format string, args ...any) { p.log.Printf(format, args...) }

// debugf logs only with stagehand.debug.
func (p *prestage) debugf(format string, args ...any) {
	if p.debug {
		p.log.Printf(format, args...)
	}
}

// stepf logs, with stagehand.debug, a step that just ended and how long
// it took: where a slow boot spends its time.
func (p *prestage) stepf(format string, args ...any) {
	if !p.debug {
		return
	}
	now := time.Now()
	if p.last.IsZero() {
		p.last = p.start
	}
	p.log.Printf("%s (%s)", fmt.Sprintf(format, args...), now.Sub(p.last).Round(10*time.Microsecond))
	p.last = now
}

// mount mounts the pseudo-filesystem fs on dir, to be unmounted before
// the hand-off; one already mounted there is left as it is.
func (p *prestage) mount(fs, dir string, flags uintptr) {
	switch err := unix.Mount(fs, dir, fs, flags, ""); err {
	case nil:
		p.mounted = append(p.mounted, dir)
	case unix.EBUSY:
	default:
		p.logf("mounting %s on %s: %v", fs, dir, err)
	}
}

func (p *prestage) param(key string) (string, bool) { return cmdline.Get(p.params, key) }

// setup mounts devtmpfs, proc and sysfs, and logs to /dev/kmsg with the
// kernel's rate limit off (it would drop all but 10 lines in 5 s).
func (p *prestage) setup() {
	for _, m := range []struct{ fs, dir string }{{"devtmpfs", "/dev"}, {"proc", "/proc"}, {"sysfs", "/sys"}} {
		os.MkdirAll(m.dir, 0o755)
		p.mount(m.fs, m.dir, unix.MS_NOSUID|unix.MS_NOEXEC)
	}
	os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0)
	if err := kmsg.SetupLogger(p.log, "stagehand:", nil); err != nil {
		p.logf("logging to the console only: %v", err)
	}
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		p.params = string(b)
	}
	_, p.debug = p.param("stagehand.debug")
	p.stepf("set up; command line: %s", strings.TrimSpace(p.params))
}

// run decides what this boot does; any error means: boot on as it is.
func (p *prestage) run() apply.Decision {
	p.loadModules()
	p.stepf("modules loaded")
	path, vars, err := p.bootDisk()
	if err != nil {
		p.logf("%v; booting on", err)
		return apply.Decision{Action: apply.Continue}
	}
	ctx := context.Background()
	dk, err := apply.Open(ctx, path, vars)
	if err != nil {
		p.logf("%v; booting on", err)
		return apply.Decision{Action: apply.Continue}
	}
	slot, _ := p.param("stagehand.slot")
	dk.Booted = meta.Slot(slot)
	if vars != nil {
		if sb, err := efivar.SecureBoot(vars); err != nil {
			p.logf("EFI variables: %v; taking Secure Boot as off", err)
		} else {
			dk.SecureBoot = sb
		}
	}
	p.stepf("opened boot disk %s: META generation %d, booted slot %q", path, dk.Store.Generation(), slot)
	dk.Logf = p.logf
	if d := dk.Store.Damaged(); d != "" {
		p.logf("META on %s: %s; the next write repairs it", dk.Store.Name(), d)
	}
	// An error of the flow is logged and the boot goes on (Continue):
	// only a kexec that fails sends the machine through the firmware.
	d, err := apply.Boot(ctx, &dk.Env)
	if err != nil {
		p.logf("%v", err)
	}
	p.stepf("decided")
	p.logf("%s: %s", d.Action, d.Reason)
	if d.Dropped != nil {
		p.clearDropped(dk, d.Dropped)
	}
	how := "once"
	var kerr error
	if d.Action == apply.Kexec {
		if kerr = p.loadKexec(ctx, dk, d.Slot); kerr != nil {
			if s, ok, _ := dk.Loader.BootOnce(ctx); !ok || s != d.Slot {
				how = "by default"
			}
		} else if kc, ok := dk.Loader.(boot.KexecCounter); ok {
			// What the bootloader would have done had it started the
			// slot (GRUB counts a trial's tries in grubenv); failing,
			// the trial gets one firmware try more, still bounded.
			if err := kc.CountKexec(ctx, d.Slot); err != nil {
				p.logf("counting the kexec as a try of slot %s: %v", d.Slot, err)
			}
		}
	}
	if cerr := dk.Close(); cerr != nil {
		p.logf("closing %s: %v", path, cerr)
	}
	p.stepf("closed %s", path)
	if kerr != nil {
		p.logf("%v: rebooting through the firmware, which boots slot %s %s", kerr, d.Slot, how)
		d.Action = apply.Reboot
	}
	return d
}

// loadModules loads the storage modules the initramfs carries for prestage,
// and those of stagehand.modules=.
func (p *prestage) loadModules() {
	var names []string
	if b, err := os.ReadFile(modulesList); err == nil {
		names = strings.Fields(string(b))
	}
	if v, ok := p.param("stagehand.modules"); ok && v != "" {
		names = append(names, strings.Split(v, ",")...)
	}
	if len(names) == 0 {
		return
	}
	var u unix.Utsname
	unix.Uname(&u)
	start := time.Now()
	p.debugf("loading modules %s", strings.Join(names, ","))
	loaded, err := kmod.Load("/"+kmod.PrestageDir+"/"+unix.ByteSliceToString(u.Release[:]), names...)
	if err != nil {
		p.logf("loading modules: %v", err)
	}
	p.logf("loaded %d modules in %s", len(loaded), time.Since(start).Round(time.Millisecond))
}

// bootDisk waits (bounded) for the disk the firmware booted from, named
// by the loader: stagehand.partuuid= (GRUB's script) or the variable
// LoaderDevicePartUUID (systemd-boot). It returns the EFI variables too;
// nil on a legacy BIOS, which has none.
func (p *prestage) bootDisk() (string, efivar.Store, error) {
	var vars efivar.Store
	if efivar.UEFIUnder("/") {
		// efivarfs is how systemd-boot says which disk booted and how
		// trials are armed; it is the one more pseudo-filesystem mounted
		// before the decision. stagehand.efivars=ro: firmware known to
		// fail or worse on variable writes at run time; the apply then
		// arms trials without boot-once.
		flags := uintptr(unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV)
		if v, _ := p.param("stagehand.efivars"); v == "ro" {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("efivarfs", disk.EFIVarsDir, "efivarfs", flags, ""); err == nil {
			p.mounted = append(p.mounted, disk.EFIVarsDir)
		} else if err != unix.EBUSY {
			return "", nil, fmt.Errorf("mounting efivarfs: %v", err)
		}
		p.stepf("mounted efivarfs")
		fsv, err := efivar.NewFS(disk.EFIVarsDir)
		if err != nil {
			return "", nil, fmt.Errorf("EFI variables: %w", err)
		}
		vars = fsv
	}
	uuid, err := disk.BootedPartUUID(p.params, vars)
	if err != nil {
		return "", nil, err
	}
	p.stepf("read the booted partition: %s", uuid)
	end := time.Now().Add(diskWait)
	for {
		path, err := disk.FindByPartUUID("/sys/block", "/dev", uuid)
		if err == nil {
			p.stepf("found the boot disk")
			return path, vars, nil
		}
		if time.Now().After(end) {
			return "", nil, fmt.Errorf("%w (waited %s)", err, diskWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loadKexec loads slot's kernel, initramfs and command line for Exec,
// noting how long reading them into memory took (the kexec line says).
func (p *prestage) loadKexec(ctx context.Context, dk *apply.Disk, slot meta.Slot) error {
	if v, _ := p.param("stagehand.kexec"); v == "0" {
		return fmt.Errorf("stagehand.kexec=0")
	}
	read := time.Now()
	if err := checkKexecMemory(dk); err != nil {
		return err
	}
	f, err := dk.Loader.OpenSlot(ctx, slot)
	if err != nil {
		return err
	}
	defer f.Close()
	entry := f.Entry
	if err := kexecAllowed(dk.SecureBoot, slot, entry); err != nil {
		return err
	}
	kf, err := kexec.MemFile("vmlinuz", f.Kernel)
	if err != nil {
		return err
	}
	defer kf.Close()
	inf, err := kexec.MemFile("initramfs", f.Initramfs)
	if err != nil {
		return err
	}
	defer inf.Close()
	start := time.Now()
	p.read = start.Sub(read)
	if err := kexec.Load(kf, inf, entry.Cmdline); err != nil {
		// Say whether lockdown is why: the kernel tells it in securityfs,
		// mounted only for this (and unmounted with the rest).
		p.mount("securityfs", kexec.SecurityFS, unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV)
		if mode := kexec.Lockdown(); mode != "" && mode != "none" {
			return fmt.Errorf("%w (kernel lockdown %q: only a kernel signed by a key the running kernel trusts loads: its built-in keys or UEFI db)", err, mode)
		}
		return err
	}
	p.logf("loaded slot %s's kernel for kexec in %s: %s", slot, time.Since(start).Round(time.Millisecond), entry.Cmdline)
	return nil
}

// kexecAllowed refuses a kexec that would bypass the firmware's check: under
// Secure Boot the firmware refuses an unsigned UKI, while kexec checks only
// the kernel inside it. Kexec'd, such a slot would run its trial, confirm
// and become the default that no cold boot can start; through the firmware
// it is refused at once and boot counting brings the machine back.
func kexecAllowed(secureBoot bool, slot meta.Slot, e boot.SlotEntry) error {
	if e.FirmwareRefuses(secureBoot) {
		return fmt.Errorf("slot %s's UKI %s is not signed and Secure Boot is on: not kexec'd, the firmware is to check it", slot, e.Description)
	}
	return nil
}

// act does what the decision says; it returns only to hand off.
func (p *prestage) act(d apply.Decision) {
	switch d.Action {
	case apply.Kexec:
		p.unmount()
		p.logf("kexec into slot %s after %s (peak memory %s), slot read in %s", d.Slot, time.Since(p.start).Round(time.Millisecond), p.peakRSS(), p.read.Round(time.Millisecond))
		if err := kexec.Exec(); err != nil {
			p.logf("%v: rebooting through the firmware", err)
		}
		p.reboot()
	case apply.Reboot:
		p.unmount()
		p.reboot()
	}
}

func (p *prestage) reboot() {
	p.logf("rebooting through the firmware after %s (peak memory %s)", time.Since(p.start).Round(time.Millisecond), p.peakRSS())
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		p.logf("reboot: %v; booting on instead", err)
	}
}

// unmount unmounts what prestage mounted, after noting its peak memory
// (read from /proc).
func (p *prestage) unmount() {
	p.peak = peakRSS()
	unix.Sync()
	for i := len(p.mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(p.mounted[i], unix.MNT_DETACH); err != nil && p.mounted[i] != "/dev" {
			p.logf("unmounting %s: %v", p.mounted[i], err)
		}
	}
	p.mounted = nil
}

// handOff execs the OS's init with prestage's own arguments and
// environment, after unmounting what prestage mounted. It runs once.
func (p *prestage) handOff() {
	p.handoff.Do(func() {
		next := "/init"
		if v, ok := p.param("stagehand.next"); ok && v != "" {
			next = v
		}
		p.logf("handing off to %s after %s (peak memory %s)", next, time.Since(p.start).Round(time.Millisecond), p.peakRSS())
		p.unmount()
		args := append([]string{next}, os.Args[1:]...)
		err := unix.Exec(next, args, os.Environ())
		p.logf("exec %s: %v", next, err)
		for _, alt := range []string{"/sbin/init", "/init"} {
			if alt != next {
				unix.Exec(alt, append([]string{alt}, os.Args[1:]...), os.Environ())
			}
		}
		p.logf("no init to hand off to: rebooting in 10 s")
		time.Sleep(10 * time.Second)
		p.reboot()
		select {}
	})
}

// peakRSS is the process's peak resident memory, from /proc while it is
// mounted, else as noted when it was unmounted.
func (p *prestage) peakRSS() string {
	if s := peakRSS(); s != "unknown" || p.peak == "" {
		return s
	}
	return p.peak
}

// peakRSS is the process's peak resident memory (VmHWM), as the kernel
// counts it.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "unknown"
}
