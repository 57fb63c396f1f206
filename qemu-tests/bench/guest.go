package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/internal/gobuild"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/stage"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// The guest side: what the VM tests boot (OVMF, systemd-boot, Debian's
// cloud kernel in slot a and generic kernel in slot b, the test OS as the
// OS's init), built here with the harness and the libraries.

// cmdline is every slot's command line but rdinit=.
const cmdline = "console=ttyS0 panic=1 no_timer_check"

// prestageModules are what prestage loads before looking for the disk,
// as in the VM tests and the demo; the test OS's own initramfs carries
// the same for its disk.
var prestageModules = []string{"virtio_pci", "virtio_blk", "efivarfs"}

type kernel struct{ vmlinuz, release, modules string }

// guest builds and boots the machines.
type guest struct {
	root, dir        string
	prestage, testos string
	goinit           string // the reference: a Go init that only execs /init
	kernels          map[string]kernel
	initrds          map[string]string // version → initramfs (v1: cloud, v2: generic)
	pre              []byte            // what prestage adds to an initramfs, uncompressed
}

func (g *guest) build() error {
	bin := filepath.Join(g.dir, "bin")
	for pkg, out := range map[string]*string{"./cmd/prestage": &g.prestage, "./qemu-tests/testos": &g.testos, "./qemu-tests/bench/goinit": &g.goinit} {
		*out = filepath.Join(bin, filepath.Base(pkg))
		if err := gobuild.Static(g.root, "amd64", *out, pkg); err != nil {
			return err
		}
	}
	g.kernels = map[string]kernel{}
	for _, flavor := range []string{"cloud", "generic"} {
		dir := filepath.Join(g.root, "build", "kernels", flavor)
		rel, err := os.ReadFile(filepath.Join(dir, "release"))
		if err != nil {
			return fmt.Errorf("no %s kernel in %s (%v): %s", flavor, dir, err, vm.Fix)
		}
		r := strings.TrimSpace(string(rel))
		g.kernels[flavor] = kernel{filepath.Join(dir, "vmlinuz"), r, filepath.Join(dir, "lib", "modules", r)}
	}
	if err := vm.CheckHost(vm.OVMF); err != nil {
		return err
	}
	if _, err := os.Stat(systemdboot.EFIBinary); err != nil {
		return fmt.Errorf("systemd-boot is missing (%v): %s", err, vm.Fix)
	}
	g.initrds = map[string]string{}
	for version, flavor := range map[string]string{"v1": "cloud", "v2": "generic"} {
		p, pre, err := g.initramfs(flavor, version)
		if err != nil {
			return err
		}
		g.initrds[version] = p
		if version == "v1" {
			g.pre = pre
		}
	}
	return nil
}

// initramfs writes the initramfs of a slot: the test OS as /init with its
// version and the modules of its disk, and appended to it what `stager
// initramfs build` appends: /prestage with its modules. It returns the path
// and the appended part.
func (g *guest) initramfs(flavor, version string) (string, []byte, error) {
	k := g.kernels[flavor]
	mods, err := initramfs.OpenModules(k.modules)
	if err != nil {
		return "", nil, err
	}
	base := initramfs.New()
	err = base.Add(
		initramfs.File{Path: "init", Source: g.testos, Mode: 0o755},
		initramfs.File{Path: "goinit", Source: g.goinit, Mode: 0o755},
		initramfs.File{Path: "etc/testos-version", Data: []byte(version + "\n"), Mode: 0o644},
		initramfs.File{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	)
	if err != nil {
		return "", nil, err
	}
	if _, err := base.AddModules(mods, prestageModules...); err != nil {
		return "", nil, err
	}
	var bb bytes.Buffer
	if _, err := base.WriteTo(&bb); err != nil {
		return "", nil, err
	}
	pre := initramfs.New()
	if err := pre.AddPrestage(initramfs.PrestageOptions{Binary: g.prestage, Modules: mods, Names: prestageModules}); err != nil {
		return "", nil, err
	}
	var pb bytes.Buffer
	if _, err := pre.WriteTo(&pb); err != nil {
		return "", nil, err
	}
	p := filepath.Join(g.dir, "initramfs-"+version)
	f, err := os.Create(p)
	if err != nil {
		return "", nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	_, err = initramfs.Append(w, bb.Bytes(), pre)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return p, pb.Bytes(), err
}

// newDisk makes a disk with slot a holding v1 (the cloud kernel) booted
// with params, and, unless v2 is "", the installer image of v2 (the
// generic kernel and initramfs v2) staged as `stager --image oci:…` does.
func (g *guest) newDisk(path, params, v2 string) error {
	ctx := context.Background()
	_, err := bootdisk.Init(ctx, path, bootdisk.Config{
		Layout:    disk.Layout{Size: disk.Layout{}.MinSize()},
		Kernel:    g.kernels["cloud"].vmlinuz,
		Initramfs: g.initrds["v1"],
		Cmdline:   cmdline + " " + params,
		Version:   "v1",
	})
	if err != nil || v2 == "" {
		return err
	}
	return g.stageImage(path, g.kernels["generic"].vmlinuz, v2, cmdline+" rdinit=/prestage", "v2")
}

// stageImage stages on the disk at path the installer image of kernel,
// initrd and cmdline, as `stager --image oci:…` does.
func (g *guest) stageImage(path, kernel, initrd, cmdline, version string) error {
	tmp, err := os.MkdirTemp(g.dir, "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	img, err := installer.Build(installer.BuildOptions{Kernel: kernel, Initramfs: initrd,
		Cmdline: cmdline, Version: version, Arch: "amd64", TempDir: tmp})
	if err != nil {
		return err
	}
	defer img.Close()
	layout := filepath.Join(tmp, "layout")
	if err := installer.WriteLayout(layout, version, img); err != nil {
		return err
	}
	_, err = stage.Stage(context.Background(), stage.Options{Disk: path, Image: "oci:" + layout + ":" + version})
	return err
}

// copyDisk copies a disk image, keeping it sparse.
func copyDisk(from, to string) error {
	if b, err := exec.Command("cp", "--sparse=always", from, to).CombinedOutput(); err != nil {
		return fmt.Errorf("cp %s %s: %v: %s", from, to, err, b)
	}
	return nil
}

// The console lines the figures are read from.
var (
	osFirstLine = regexp.MustCompile(`^stagehand-testos: `)
	osVersion   = regexp.MustCompile(`^stagehand-testos: version=(\S+) uname=(\S+) slot=(\S*)`)
	modulesLine = regexp.MustCompile(`stagehand: loaded (\d+) modules in (\S+)`)
	handoffLine = regexp.MustCompile(`stagehand: handing off to /init after (\S+) \(peak memory (\d+) kB\)`)
	applying    = regexp.MustCompile(`stagehand: staged → applying `)
	trialArmed  = regexp.MustCompile(`stagehand: applying → trial `)
	rebootLine  = regexp.MustCompile(`stagehand: rebooting through the firmware after (\S+) \(peak memory (\d+) kB\)`)
	leaveLine   = regexp.MustCompile(`stagehand: (?:kexec into slot b|rebooting through the firmware) after (\S+) \(peak memory (\d+) kB\)`)
	runInit     = regexp.MustCompile(`\] Run /\S+ as init process`)
	kexecLoaded = regexp.MustCompile(`stagehand: loaded slot b's kernel for kexec in (\S+):`)
	noKexec     = regexp.MustCompile(`stagehand: (.*): rebooting through the firmware, which boots slot b once`)
)

// find returns the first line from lines that matches re.
func find(lines []line, re *regexp.Regexp) (line, []string, bool) {
	for _, l := range lines {
		if m := re.FindStringSubmatch(l.text); m != nil {
			return l, m, true
		}
	}
	return line{}, nil, false
}

// kernelTime is a kernel console line's timestamp in seconds.
func kernelTime(s string) float64 {
	m := kernelTS.FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func ms(s string) float64 {
	d, err := time.ParseDuration(s)
	if err != nil {
		return -1
	}
	return float64(d) / float64(time.Millisecond)
}

// waitStep bounds each wait for the next line of a boot.
const waitStep = 4 * time.Minute

// bootWait bounds the wait for v2's init once prestage has left through
// kexec or the firmware: 12 s here through the firmware with the VM tests'
// slot, 30 s with a 128 MiB slot in a 512 MiB VM; a firmware that hangs
// silently (a 128 MiB slot in a 256 MiB VM, at times) is not waited for
// longer.
const bootWait = 100 * time.Second

// noopBoot is one boot of a disk with nothing staged, up to the OS init's
// first line.
type noopBoot struct {
	Variant   string  `json:"variant"`
	ToInit    float64 `json:"kernel_start_to_init_s"` // host seconds, kernel start → the test OS's first line
	KernelAt  float64 `json:"kernel_start_s"`         // since power on
	ClockRate float64 `json:"clock_rate"`             // host s per guest s
	Prestage  float64 `json:"prestage_ms,omitempty"`  // prestage's hand-off line
	Modules   float64 `json:"modules_ms,omitempty"`   // its module loading
	Own       float64 `json:"own_ms,omitempty"`       // the difference
	PeakKB    float64 `json:"peak_kb,omitempty"`
	PreMain   float64 `json:"exec_to_main_ms,omitempty"` // the kernel's "Run /prestage" to prestage's main (Go runtime start)
	Log       string  `json:"log"`
}

func (g *guest) noop(m *vm.Machine, variant, log string) (*noopBoot, error) {
	p, err := powerOn(m, log)
	if err != nil {
		return nil, err
	}
	first, _, err := p.wait(osFirstLine, waitStep)
	if err == nil {
		_, _, err = p.wait(osVersion, time.Minute)
	}
	grace := time.Minute
	if err != nil {
		grace = 0
	}
	if offErr := p.off(grace); err == nil {
		err = offErr
	}
	if err != nil {
		return nil, fmt.Errorf("%s (console: %s)", err, log)
	}
	var before []line
	for _, l := range p.all() {
		if l.at <= first.at {
			before = append(before, l)
		}
	}
	start, rate, ok := kernelStart(before)
	if !ok {
		return nil, fmt.Errorf("no kernel timestamps on the console before the OS's first line (console: %s)", log)
	}
	nb := &noopBoot{Variant: variant, ToInit: (first.at - start).Seconds(), KernelAt: start.Seconds(), ClockRate: rate, Log: log}
	if variant == "prestage" {
		_, mm, ok1 := find(before, modulesLine)
		hl, hm, ok2 := find(before, handoffLine)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("prestage did not log its module loading and hand-off (console: %s)", log)
		}
		nb.Modules, nb.Prestage = ms(mm[2]), ms(hm[1])
		nb.Own = nb.Prestage - nb.Modules
		nb.PeakKB, _ = strconv.ParseFloat(hm[2], 64)
		if rl, _, ok := find(before, runInit); ok {
			nb.PreMain = (kernelTime(hl.text)-kernelTime(rl.text))*1000 - nb.Prestage
		}
	}
	return nb, nil
}

// upgrade is one boot of a disk with v2 staged: apply, reboot into v2.
type upgrade struct {
	Variant  string  `json:"variant"`
	MemoryMB int     `json:"memory_mb"`
	Apply    float64 `json:"apply_s"`       // staged → applying to applying → trial (host)
	Reboot   float64 `json:"reboot_s"`      // applying → trial to v2's first line (host)
	Leave    float64 `json:"leave_to_os_s"` // the kexec or reboot line to v2's first line (host)
	Load     float64 `json:"kexec_load_ms"` // kexec_file_load, from prestage's log
	Prestage float64 `json:"prestage_ms"`   // prestage's whole run, from its log
	PeakKB   float64 `json:"peak_kb"`       // prestage's VmHWM when it left
	How      string  `json:"how"`           // kexec or firmware
	Why      string  `json:"why_not_kexec,omitempty"`
	Version  string  `json:"booted"` // the version the OS says after the reboot
	Uname    string  `json:"uname"`
	// Steps is the reboot into v2 step by step (steps.go), in ms by step.
	Steps    map[string]float64 `json:"steps_ms,omitempty"`
	StepsErr string             `json:"steps_error,omitempty"`
	Log      string             `json:"log"`
}

func (g *guest) upgrade(template, variant, dir string, memMB int) (*upgrade, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "disk.img")
	if err := copyDisk(template, img); err != nil {
		return nil, err
	}
	defer os.Remove(img)
	m, err := vm.New(vm.Config{Dir: dir, Disk: img, MemoryMB: memMB, Held: guestSlots})
	if err != nil {
		return nil, err
	}
	log := filepath.Join(dir, "console.log")
	p, err := powerOn(m, log)
	if err != nil {
		return nil, err
	}
	u := &upgrade{Variant: variant, MemoryMB: memMB, Log: log}
	err = func() error {
		a, _, err := p.wait(applying, waitStep)
		if err != nil {
			return err
		}
		t, _, err := p.wait(trialArmed, 2*waitStep)
		if err != nil {
			return err
		}
		u.Apply = (t.at - a.at).Seconds()
		l, lm, err := p.wait(leaveLine, waitStep)
		if err != nil {
			return err
		}
		u.Prestage = ms(lm[1])
		u.PeakKB, _ = strconv.ParseFloat(lm[2], 64)
		u.How = "firmware"
		if strings.Contains(l.text, "kexec into") {
			u.How = "kexec"
		}
		lines := p.all()
		if _, km, ok := find(lines, kexecLoaded); ok {
			u.Load = ms(km[1])
		}
		if _, nm, ok := find(lines, noKexec); ok {
			u.Why = nm[1]
		}
		v2, _, err := p.wait(osFirstLine, bootWait)
		if err != nil {
			return err
		}
		_, vv, err := p.wait(osVersion, time.Minute)
		if err != nil {
			return err
		}
		u.Reboot, u.Leave = (v2.at - t.at).Seconds(), (v2.at - l.at).Seconds()
		u.Version, u.Uname = vv[1], vv[2]
		var serr error
		if u.Steps, serr = stepsOf(p.all()); serr != nil {
			u.StepsErr = serr.Error()
		}
		return nil
	}()
	// A boot that went nowhere is not waited for.
	grace := time.Minute
	if err != nil {
		grace = 0
	}
	if offErr := p.off(grace); err == nil {
		err = offErr
	}
	if err != nil {
		return u, fmt.Errorf("%s (console: %s)", err, log)
	}
	return u, nil
}

// compressed returns the sizes of b compressed as the kernel accepts an
// initramfs (CONFIG_RD_GZIP, _XZ, _ZSTD in Debian's kernels): gzip -9, xz
// -9 with CRC32 checks (the kernel's xz needs them; the xz command, when
// there is one), zstd at its best level.
func compressed(b []byte) (map[string]int, error) {
	out := map[string]int{}
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write(b)
	if err := w.Close(); err != nil {
		return nil, err
	}
	out["gzip -9"] = gz.Len()
	zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		return nil, err
	}
	out["zstd (best)"] = len(zw.EncodeAll(b, nil))
	if xzBin, err := exec.LookPath("xz"); err == nil {
		cmd := exec.Command(xzBin, "-9", "--check=crc32", "--stdout")
		cmd.Stdin = bytes.NewReader(b)
		if x, err := cmd.Output(); err == nil {
			out["xz -9 --check=crc32"] = len(x)
		}
	}
	return out, nil
}
