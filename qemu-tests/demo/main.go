// Command demo tells stagehand's story end to end on a real stack: it
// builds two OS versions, makes a disk with v1, starts Debian's
// docker-registry on 127.0.0.1, pushes v2 there, stages it with stager,
// and boots the disk under QEMU with OVMF and systemd-boot: v1 boots, the
// pre-stage init applies v2 and kexecs into it, v2 confirms itself, and
// after a cold reboot v2 stays. It prints each phase with its time, and
// exits 0 only when the whole story happened. Run it with `make demo`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

var (
	root    = flag.String("root", ".", "the repository")
	out     = flag.String("out", "build/demo", "where the demo writes its files and logs")
	timeout = flag.Duration("boot-timeout", 3*time.Minute, "longest wait for any one step of a boot")
)

func main() {
	flag.Parse()
	d := &demo{}
	err := d.run()
	d.stopRegistry()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\nlogs: %s\n", err, *out)
		os.Exit(1)
	}
}

type demo struct {
	dir      string
	stager   string
	registry *exec.Cmd
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
	if err := vm.CheckHost(vm.OVMF); err != nil {
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

	say("Two versions of a tiny OS: v1 on Debian's %s kernel, v2 on %s", v1k.release, v2k.release)
	testos := filepath.Join(d.dir, "testos")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", testos, "./qemu-tests/testos")
	build.Dir, build.Env = *root, append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the test OS: %v: %s", err, b)
	}
	for _, v := range []struct {
		name string
		k    kernel
	}{{"v1", v1k}, {"v2", v2k}} {
		base := filepath.Join(d.dir, v.name+"-base.cpio")
		if err := writeBase(base, testos, d.stager, v.name); err != nil {
			return err
		}
		if err := d.sh(d.stager, "initramfs", "build", "--base", base, "--kernel-modules", v.k.modules,
			"--modules", "virtio_pci,virtio_blk,efivarfs", "--prestage", filepath.Join(bin, "prestage"),
			"--output", v.name+".initramfs"); err != nil {
			return err
		}
	}

	say("A disk with the stagehand layout and v1 in slot a")
	if err := d.sh(d.stager, "disk", "init", "--disk", "disk.img", "--size", "1G", "--kernel", v1k.vmlinuz,
		"--initramfs", "v1.initramfs", "--version", "v1", "--cmdline", "console=ttyS0 rdinit=/prestage panic=1 stagehand.testos.steps=status"); err != nil {
		return err
	}

	say("Debian's docker-registry on 127.0.0.1, and v2 pushed to it as an installer image")
	addr, err := d.startRegistry()
	if err != nil {
		return err
	}
	ref := addr + "/stagehand/os:v2"
	if err := d.sh(d.stager, "image", "build", "--kernel", v2k.vmlinuz, "--initramfs", "v2.initramfs", "--version", "v2",
		"--cmdline", "console=ttyS0 rdinit=/prestage panic=1 stagehand.testos.steps=confirm,status", "--push", ref); err != nil {
		return err
	}

	say("Stage v2 while v1 is the system: pull, verify, write to STAGE, record in META")
	start := time.Now()
	if err := d.sh(d.stager, "--image", ref, "--disk", "disk.img"); err != nil {
		return err
	}
	d.phase("stage v2 from the registry", time.Since(start))
	if err := d.sh(d.stager, "status", "--disk", "disk.img"); err != nil {
		return err
	}
	return d.boot()
}

// writeBase writes the OS's own initramfs: the test OS as /init, its
// version, and stager for confirm.
func writeBase(path, testos, stager, version string) error {
	a := initramfs.New()
	err := a.Add(
		initramfs.File{Path: "init", Source: testos, Mode: 0o755},
		initramfs.File{Path: "usr/bin/stager", Source: stager, Mode: 0o755},
		initramfs.File{Path: "etc/testos-version", Data: []byte(version + "\n"), Mode: 0o644},
		initramfs.File{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	)
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
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return "", fmt.Errorf("docker-registry is not installed (Debian package docker-registry; make demo installs it)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(d.dir, "registry.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(d.dir, "registry"), addr)), 0o644)
	logf, err := os.Create(filepath.Join(d.dir, "registry.log"))
	if err != nil {
		return "", err
	}
	d.registry = exec.Command(bin, "serve", cfg)
	d.registry.Stdout, d.registry.Stderr = logf, logf
	if err := d.registry.Start(); err != nil {
		return "", fmt.Errorf("starting docker-registry: %w", err)
	}
	fmt.Printf("$ docker-registry serve %s   (pid %d, on %s)\n", cfg, d.registry.Process.Pid, addr)
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("docker-registry did not listen on %s (see registry.log)", addr)
}

func (d *demo) stopRegistry() {
	if d.registry != nil && d.registry.Process != nil {
		d.registry.Process.Kill()
		d.registry.Wait()
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

func (d *demo) boot() error {
	m, err := vm.New(vm.Config{Dir: filepath.Join(d.dir, "vm"), Disk: filepath.Join(d.dir, "disk.img")})
	if err != nil {
		return err
	}
	say("Power on: OVMF → systemd-boot → v1's kernel → prestage (console lines as they come)")
	r, err := m.Start()
	if err != nil {
		return err
	}
	defer r.Kill()
	_, tPre, err := expect(r, "the pre-stage init", `stagehand: .*`)
	if err != nil {
		return err
	}
	if _, _, err = expect(r, "the apply to start", `stagehand: staged → applying .*`); err != nil {
		return err
	}
	_, tArmed, err := expect(r, "the trial to be armed", `stagehand: applying → trial .*`)
	if err != nil {
		return err
	}
	_, tKexec, err := expect(r, "kexec", `stagehand: kexec into slot b after .*`)
	if err != nil {
		return err
	}
	m2, tV2, err := expect(r, "v2 to boot", `stagehand-testos: version=v2 uname=(\S+) slot=b`)
	if err != nil {
		return err
	}
	if _, _, err = expect(r, "stager confirm", `confirmed slot b .*`); err != nil {
		return err
	}
	if err := r.Wait(*timeout); err != nil {
		return fmt.Errorf("v2 did not power off: %w", err)
	}
	d.phase("power on to prestage (firmware, systemd-boot, v1 kernel)", tPre)
	d.phase("prestage: verify and write slot b, arm the trial", tArmed-tPre)
	d.phase("kexec into v2 (no firmware pass) up to its init", tV2-tKexec)

	say("Cold reboot: v2 (%s) must stay", m2[1])
	r2, err := m.Start()
	if err != nil {
		return err
	}
	defer r2.Kill()
	_, tPre2, err := expect(r2, "the pre-stage init", `stagehand: .*`)
	if err != nil {
		return err
	}
	if _, _, err := expect(r2, "v2 to boot again", `stagehand-testos: version=v2 uname=\S+ slot=b`); err != nil {
		return err
	}
	if _, _, err := expect(r2, "v2 to be confirmed already", `slot b is already confirmed`); err != nil {
		return err
	}
	if err := r2.Wait(*timeout); err != nil {
		return fmt.Errorf("v2 did not power off: %w", err)
	}
	d.phase("cold boot through the firmware to prestage", tPre2)

	say("What META says now")
	if err := d.sh(d.stager, "status", "--disk", "disk.img"); err != nil {
		return err
	}
	say("Summary")
	for _, p := range d.phases {
		fmt.Printf("    %-60s %6.1f s\n", p.name, p.d.Seconds())
	}
	saving := tPre2 - (tV2 - tKexec)
	fmt.Printf("    %-60s %6.1f s\n", "kexec saving against a firmware reboot (firmware+loader path)", saving.Seconds())
	if saving <= 0 {
		return errors.New("kexec was not faster than a firmware reboot")
	}
	fmt.Printf("\ndemo: the story completed: v1 → staged v2 → applied at boot → kexec → v2 confirmed → v2 after a cold reboot\nlogs: %s\n", d.dir)
	return nil
}
