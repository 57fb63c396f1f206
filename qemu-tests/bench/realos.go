package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/internal/benchstat"
	"github.com/stagehand-dev/stagehand/qemu-tests/realos"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// realOSTiming is what the real OS's driver says (its timing step): when
// boot-complete.target was reached and how long stagehand-confirm.service's
// stager confirm ran, by the kernel's monotonic clock.
// realOSBootTimeout bounds one real OS boot under TCG.
const realOSBootTimeout = 5 * time.Minute

var realOSTiming = regexp.MustCompile(`realos: timing: boot-complete=(\d+)us confirm=(-?\d+)us`)

// realOSDisk makes a disk whose slot a holds the real OS on the cloud
// kernel, started with rdinit (/prestage or /init), its driver reporting
// the timing and powering off.
func (g *guest) realOSDisk(ctx context.Context, path, rdinit string, logf func(string, ...any)) error {
	img, err := realos.Build(ctx, g.root, logf)
	if err != nil {
		return err
	}
	bin := filepath.Join(g.dir, "bin")
	outs := map[string]string{}
	for _, pkg := range []string{"./cmd/stager", "./qemu-tests/realos/init"} {
		out := filepath.Join(bin, "realos-"+filepath.Base(pkg))
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Dir = g.root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %v: %s", pkg, err, b)
		}
		outs[pkg] = out
	}
	k := g.kernels["cloud"]
	mods, err := initramfs.OpenModules(k.modules)
	if err != nil {
		return err
	}
	base, err := realos.Slot{Root: g.root, Image: img.Path, Init: outs["./qemu-tests/realos/init"], Stager: outs["./cmd/stager"],
		Modules: mods, Version: "v1"}.Archive()
	if err != nil {
		return err
	}
	var b strings.Builder
	if _, err := base.WriteTo(&b); err != nil {
		return err
	}
	pre := initramfs.New()
	if err := pre.AddPrestage(initramfs.PrestageOptions{Binary: g.prestage, Modules: mods, Names: prestageModules}); err != nil {
		return err
	}
	initrd := path + ".initramfs"
	f, err := os.Create(initrd)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	_, err = initramfs.Append(bw, []byte(b.String()), pre)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = boot.InitDisk(ctx, path, boot.DiskConfig{
		Layout:    disk.Layout{Size: disk.Layout{}.MinSize()},
		Kernel:    k.vmlinuz,
		Initramfs: initrd,
		Cmdline:   "rdinit=" + rdinit + " " + cmdline + " stagehand.realos.steps=timing,poweroff",
		Version:   "v1",
	})
	return err
}

// realOS boots the real OS with nothing staged, with rdinit=/prestage and
// with rdinit=/init (its own init, no prestage), in turns: kernel start →
// boot-complete.target, and the confirm unit's own time (stager confirm on
// a slot confirmed already: what every settled boot runs).
func (b *bench) realOS(g *guest) {
	t0 := b.now()
	fig := &Figure{ID: "realos-noop", Name: "real OS (Debian bookworm, systemd): kernel start → boot-complete.target, rdinit=/prestage (nothing staged)", Pass: true}
	conf := &Figure{ID: "realos-confirm", Name: "real OS: stagehand-confirm.service's stager confirm on a settled boot (ExecMainStart → ExecMainExit)", Pass: true}
	fail := func(err error) {
		b.add(fig, err.Error())
		b.add(conf, err.Error())
	}
	b.logf("guest: real OS, %d boots each with rdinit=/prestage and rdinit=/init, in turns", *realOSBoots)
	machines := map[string]*vm.Machine{}
	variants := []string{"prestage", "init"}
	for _, v := range variants {
		img := filepath.Join(g.dir, "realos-"+v+".img")
		if err := g.realOSDisk(context.Background(), img, "/"+v, b.logf); err != nil {
			fail(err)
			return
		}
		m, err := vm.New(vm.Config{Dir: filepath.Join(g.dir, "realos-"+v), Disk: img})
		if err != nil {
			fail(err)
			return
		}
		machines[v] = m
	}
	got := map[string][]float64{}
	var confirm, pair []float64
	for i := range *realOSBoots {
		order := append(slices.Clone(variants[i%2:]), variants[:i%2]...)
		this := map[string]float64{}
		for _, v := range order {
			r, err := machines[v].Start()
			if err != nil {
				fail(err)
				return
			}
			m, err := r.Expect(context.Background(), realOSBootTimeout, realOSTiming)
			if err == nil {
				err = r.Wait(realOSBootTimeout)
			}
			r.Kill()
			if err != nil {
				fail(fmt.Errorf("real OS boot %d (rdinit=/%s): %w", i+1, v, err))
				return
			}
			bc, _ := strconv.ParseFloat(m[1], 64)
			cf, _ := strconv.ParseFloat(m[2], 64)
			this[v] = bc / 1e6
			got[v] = append(got[v], bc/1e6)
			if v == "prestage" {
				confirm = append(confirm, cf/1e3)
			}
			b.logf("  real OS boot %d rdinit=/%s: kernel start → boot-complete.target %.2f s; confirm %.0f ms", i+1, v, bc/1e6, cf/1e3)
		}
		pair = append(pair, (this["prestage"]/this["init"]-1)*100)
	}
	load := b.watch.during(t0, b.now())
	fig.Load, conf.Load = load, load
	fig.Measured = measure("rdinit=/prestage", "s", got["prestage"])
	base := measure("rdinit=/init", "s", got["init"])
	fig.Baseline = &base
	over := (benchstat.Median(got["prestage"])/benchstat.Median(got["init"]) - 1) * 100
	fig.Ratio = &Measure{Label: "overhead", Value: over, Min: slices.Min(pair), Max: slices.Max(pair), Unit: "%", Runs: len(pair)}
	fig.Note = "by systemd's ActiveEnterTimestampMonotonic of boot-complete.target (µs since the kernel started); the same disk but rdinit=, the OS's init loading the disk's modules itself without prestage"
	conf.Measured = measure("stager confirm", "ms", confirm)
	conf.Note = "a settled boot's confirm (slot a confirmed already); the confirm of a trial, which writes META and the ESP, is in TestRealOSUpgrade's log"
	b.add(fig, "")
	b.add(conf, "")
}
