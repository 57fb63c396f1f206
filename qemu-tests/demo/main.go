// Command demo tells stagehand's story end to end on a real stack: it
// builds three versions of the real systemd OS (Debian bookworm, package
// realos), makes a disk with v1, starts Debian's docker-registry on
// 127.0.0.1, pushes v2 and v3 there, stages v2 with stager, and boots the
// disk under QEMU with OVMF and systemd-boot (-bootloader grub-bios:
// SeaBIOS and GRUB; grub-efi: OVMF and GRUB): v1's pre-stage init applies
// v2 and kexecs into it, v2's health checks pass and its confirm unit
// confirms it after boot-complete.target. Then v3, whose required health
// check fails: it is applied and tried, never confirmed, and after its
// tries the machine is back on v2, whose stager status says why. It
// prints each phase with its time, and exits 0 only when the whole story
// happened. Run it with `make demo`.
package main

import (
	"github.com/stagehand-dev/stagehand/internal/distribution"

	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/internal/gobuild"
	"github.com/stagehand-dev/stagehand/qemu-tests/realos"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

var (
	root    = flag.String("root", ".", "the repository")
	out     = flag.String("out", "build/demo", "where the demo writes its files and logs")
	timeout = flag.Duration("boot-timeout", 3*time.Minute, "longest wait for any one step of a boot")
	loader  = flag.String("bootloader", "systemd-boot", "the disk's bootloader, as stager disk init --bootloader takes it: systemd-boot, grub-bios (booted by SeaBIOS) or grub-efi")
)

// firmware is the machine's firmware for the bootloader, and how the
// story names the two.
func firmware() (vm.Firmware, string, error) {
	switch *loader {
	case "systemd-boot":
		return vm.OVMF, "OVMF → systemd-boot", nil
	case "grub-bios":
		return vm.SeaBIOS, "SeaBIOS → GRUB", nil
	case "grub-efi":
		return vm.OVMF, "OVMF → GRUB", nil
	}
	return vm.Firmware{}, "", fmt.Errorf("-bootloader %q: want systemd-boot, grub-bios or grub-efi", *loader)
}

func main() {
	flag.Parse()
	d := &demo{began: time.Now()}
	err := d.run()
	d.stopRegistry()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\nlogs: %s\n", err, *out)
		os.Exit(1)
	}
}

type demo struct {
	began    time.Time
	dir      string
	stager   string
	registry *distribution.Registry
	phases   []phase
}

type phase struct {
	name string
	d    time.Duration
}

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func (d *demo) phase(name string, dur time.Duration) {
	d.phases = append(d.phases, phase{name, dur})
	fmt.Printf("    [%s: %.1f s]\n", name, dur.Seconds())
}

// sh runs a command with its output on the terminal, echoing it first.
func (d *demo) sh(name string, args ...string) error {
	shown := strings.ReplaceAll(strings.Join(args, " "), d.dir+"/", "")
	fmt.Printf("$ %s %s\n", filepath.Base(name), strings.ReplaceAll(shown, *root+"/", ""))
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir = d.dir
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

type kernel struct{ vmlinuz, release, modules string }

func (d *demo) kernel(flavor string) (kernel, error) {
	dir := filepath.Join(*root, "build", "kernels", flavor)
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		return kernel{}, fmt.Errorf("no %s kernel: %v (run make deps)", flavor, err)
	}
	r := strings.TrimSpace(string(rel))
	return kernel{filepath.Join(dir, "vmlinuz"), r, filepath.Join(dir, "lib", "modules", r)}, nil
}

func (d *demo) run() error {
	var err error
	if d.dir, err = filepath.Abs(*out); err != nil {
		return err
	}
	if *root, err = filepath.Abs(*root); err != nil {
		return err
	}
	os.RemoveAll(d.dir)
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	fw, _, err := firmware()
	if err != nil {
		return err
	}
	if err := vm.CheckHost(fw); err != nil {
		return err
	}
	bin, _ := filepath.Abs(filepath.Join(*root, "build"))
	d.stager = filepath.Join(bin, "stager")
	v1k, err := d.kernel("cloud")
	if err != nil {
		return err
	}
	v2k, err := d.kernel("generic")
	if err != nil {
		return err
	}

	say("The real OS: Debian bookworm (systemd, udev, kmod) as a squashfs, cached under build/realos")
	img, err := realos.Build(context.Background(), *root, func(f string, a ...any) { fmt.Printf("    "+f+"\n", a...) })
	if err != nil {
		return err
	}
	how := "from the cache"
	if img.Built {
		how = "built now"
	}
	fmt.Printf("    root image %s (key %s): %s in %.1f s\n", filepath.Base(img.Path), img.Key, how, img.Took.Seconds())
	d.phase("the real OS's root image", img.Took)
	initBin := filepath.Join(d.dir, "realos-init")
	if err := gobuild.Static(*root, "amd64", initBin, "./qemu-tests/realos/init"); err != nil {
		return fmt.Errorf("the real OS's init: %w", err)
	}
	say("Three versions: v1 on Debian's %s kernel, v2 on %s (its wanted check fails: a warning), v3 on %s (its required check fails)", v1k.release, v2k.release, v1k.release)
	for _, v := range []struct {
		name  string
		k     kernel
		check initramfs.File
	}{
		{"v1", v1k, initramfs.File{}},
		{"v2", v2k, initramfs.File{Path: "etc/stagehand/check/wanted.d/60-disk-space", Mode: 0o755,
			Data: []byte("#!/bin/sh\necho 'only 3% free on /var (the demo says so)'\nexit 1\n")}},
		{"v3", v1k, initramfs.File{Path: "etc/stagehand/check/required.d/20-api", Mode: 0o755,
			Data: []byte("#!/bin/sh\necho 'the API server of v3 does not answer on :6443'\nexit 1\n")}},
	} {
		base := filepath.Join(d.dir, v.name+"-base.cpio")
		var files []initramfs.File
		if v.check.Path != "" {
			files = append(files, v.check)
		}
		if err := writeBase(base, slotOf(img.Path, initBin, d.stager, v.k, v.name, files)); err != nil {
			return err
		}
		if err := d.sh(d.stager, "initramfs", "build", "--base", base, "--kernel-modules", v.k.modules,
			"--modules", "virtio_pci,virtio_blk,efivarfs", "--prestage", filepath.Join(bin, "prestage"),
			"--output", v.name+".initramfs"); err != nil {
			return err
		}
	}

	say("A disk with the stagehand layout, %s and v1 in slot a", *loader)
	if err := d.sh(d.stager, "disk", "init", "--disk", "disk.img", "--size", "1G", "--bootloader", *loader, "--kernel", v1k.vmlinuz,
		"--initramfs", "v1.initramfs", "--version", "v1", "--cmdline", cmdline("status,poweroff")); err != nil {
		return err
	}

	say("Debian's docker-registry on 127.0.0.1, and v2 and v3 pushed to it as installer images")
	addr, err := d.startRegistry()
	if err != nil {
		return err
	}
	ref := addr + "/stagehand/os:v2"
	if err := d.sh(d.stager, "image", "build", "--kernel", v2k.vmlinuz, "--initramfs", "v2.initramfs", "--version", "v2",
		"--cmdline", cmdline("status,poweroff"), "--push", ref); err != nil {
		return err
	}
	ref3 := addr + "/stagehand/os:v3"
	if err := d.sh(d.stager, "image", "build", "--kernel", v1k.vmlinuz, "--initramfs", "v3.initramfs", "--version", "v3",
		"--cmdline", cmdline("status,poweroff"), "--push", ref3); err != nil {
		return err
	}

	say("Stage v2 while v1 is the system: pull, verify, write to STAGE, record in META")
	start := time.Now()
	if err := d.sh(d.stager, "--image", ref, "--disk", "disk.img"); err != nil {
		return err
	}
	d.phase("stage v2 from the registry", time.Since(start))
	return d.boot(ref3)
}

// cmdline is the kernel command line of a slot, with the steps of the
// real OS's driver (qemu-tests/realos/layer/driver).
func cmdline(steps string) string {
	return "console=ttyS0 rdinit=/prestage panic=5 no_timer_check tsc=reliable stagehand.realos.steps=" + steps
}

// slotOf is the real OS's part of a slot's initramfs.
func slotOf(image, initBin, stager string, k kernel, version string, files []initramfs.File) func() (*initramfs.Archive, error) {
	return func() (*initramfs.Archive, error) {
		mods, err := initramfs.OpenModules(k.modules)
		if err != nil {
			return nil, err
		}
		return realos.Slot{Root: *root, Image: image, Init: initBin, Stager: stager, Modules: mods, Version: version, Files: files}.Archive()
	}
}

// writeBase writes the OS's own initramfs (the base that stager initramfs
// build adds the pre-stage init to).
func writeBase(path string, archive func() (*initramfs.Archive, error)) error {
	a, err := archive()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := a.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (d *demo) startRegistry() (string, error) {
	r, err := distribution.Start(d.dir)
	if err != nil {
		return "", err
	}
	d.registry = r
	fmt.Printf("$ docker-registry serve %s   (pid %d, on %s)\n", r.Config, r.Pid(), r.Addr)
	return r.Addr, nil
}

func (d *demo) stopRegistry() {
	if d.registry != nil {
		d.registry.Stop()
	}
}

// expect waits for a console line and echoes it.
func expect(r *vm.Run, what string, re string) ([]string, time.Duration, error) {
	m, err := r.Expect(context.Background(), *timeout, regexp.MustCompile(re))
	if err != nil {
		return nil, 0, fmt.Errorf("waiting for %s: %w\n--- console tail ---\n%s", what, err, r.Tail(30))
	}
	fmt.Printf("    %6.1f s  %s\n", r.Elapsed().Seconds(), strings.TrimSpace(m[0]))
	return m, r.Elapsed(), nil
}

func (d *demo) boot(ref3 string) error {
	fw, chain, err := firmware()
	if err != nil {
		return err
	}
	m, err := vm.New(vm.Config{Dir: filepath.Join(d.dir, "vm"), Disk: filepath.Join(d.dir, "disk.img"), Firmware: fw, CPUs: 2, Slots: 2})
	if err != nil {
		return err
	}
	say("Power on: %s → v1's kernel → prestage → kexec → v2's systemd (console lines as they come)", chain)
	r, err := m.Start()
	if err != nil {
		return err
	}
	defer r.Kill()
	steps := []struct{ what, re string }{
		{"the pre-stage init", `stagehand: loaded .*`},
		{"the apply to start", `stagehand: staged → applying .*`},
		{"the trial to be armed", `stagehand: applying → trial .*`},
		{"kexec", `stagehand: kexec into slot b after .*`},
		{"v2's prestage", `stagehand: trial → trial \(slot b\): .*`},
		{"v2's init", `realos-init: switching to systemd .*`},
		{"v2's wanted check", `warning: wanted check .*`},
		{"the confirm unit", `confirmed slot b \(v2\).*`},
		{"v2's driver", `realos: version=v2 uname=\S+ slot=b`},
		{"v2's stager status", `realos: status: slot b: .*`},
	}
	at := map[string]time.Duration{}
	for _, s := range steps {
		_, t, err := expect(r, s.what, s.re)
		if err != nil {
			return err
		}
		at[s.what] = t
	}
	if err := r.Wait(*timeout); err != nil {
		return fmt.Errorf("v2 did not power off: %w", err)
	}
	d.phase("power on to prestage (firmware, "+*loader+", v1 kernel)", at["the pre-stage init"])
	d.phase("prestage: verify and write slot b, arm the trial", at["the trial to be armed"]-at["the pre-stage init"])
	d.phase("kexec into v2 up to systemd (its init)", at["v2's init"]-at["kexec"])
	d.phase("systemd to the confirm (health checks, boot-complete.target)", at["the confirm unit"]-at["v2's init"])

	say("Stage v3 (its required health check fails) from the registry, v2 off")
	start := time.Now()
	if err := d.sh(d.stager, "--image", ref3, "--disk", "disk.img"); err != nil {
		return err
	}
	d.phase("stage v3 from the registry", time.Since(start))

	say("Power on: v2 applies v3, kexec; v3 is tried twice, never confirmed; back on v2")
	r2, err := m.Start()
	if err != nil {
		return err
	}
	defer r2.Kill()
	steps = []struct{ what, re string }{
		{"v2's prestage applies v3", `stagehand: staged → applying \(slot a\).*`},
		{"kexec into v3", `stagehand: kexec into slot a after .*`},
		{"v3's first try", `stagehand: trial → trial \(slot a\): trial boot 1 of 2.*`},
		{"v3's required check", `required check \S+ .*failed.*`},
		{"v3's reboot", `the trial slot is not healthy: rebooting.*`},
		{"v3's second try", `stagehand: trial → trial \(slot a\): trial boot 2 of 2.*`},
		{"v3's second reboot", `the trial slot is not healthy: rebooting.*`},
		{"the rollback", `stagehand: trial → idle \(slot a\): rolled back: .*`},
		{"v2 again", `realos: version=v2 uname=\S+ slot=b`},
		{"v2's stager status", `realos: status: slot a: .*`},
	}
	for _, s := range steps {
		_, t, err := expect(r2, s.what, s.re)
		if err != nil {
			return err
		}
		at[s.what] = t
	}
	if err := r2.Wait(*timeout); err != nil {
		return fmt.Errorf("v2 did not power off: %w", err)
	}
	d.phase("v3's two tries and the way back to v2's driver", at["v2 again"])

	say("What META says now")
	if err := d.sh(d.stager, "status", "--disk", "disk.img"); err != nil {
		return err
	}
	say("Summary")
	var total time.Duration
	for _, p := range d.phases {
		fmt.Printf("    %-62s %6.1f s\n", p.name, p.d.Seconds())
	}
	total = time.Since(d.began)
	fmt.Printf("    %-62s %6.1f s\n", "the whole demo", total.Seconds())
	fmt.Printf("\ndemo: the story completed: v1 → staged v2 → applied at boot → kexec → health checks → v2 confirmed; v3 staged → tried twice, its required check failing → back on v2, the reason in META\nlogs: %s\n", d.dir)
	return nil
}
