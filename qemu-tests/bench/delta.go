package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/internal/distribution"
	"github.com/stagehand-dev/stagehand/internal/gobuild"
	"github.com/stagehand-dev/stagehand/qemu-tests/realos"
	"github.com/stagehand-dev/stagehand/stage"
)

// deltaPin is the package whose older version makes the real OS's "v1":
// a library every root holds, updated by Debian's security archive often.
const deltaPin = "libssl3"

// deltaFigures measures delta staging: its time against a whole pull from
// Debian's docker-registry on 127.0.0.1 and through a 100 Mbit/s link
// (BenchmarkStageDelta), and what it fetches between real OS slots that
// differ by one Debian package, and by the kernel.
func (b *bench) deltaFigures(g *guest) {
	n := *hostRuns
	logPath := filepath.Join(b.out, "go-bench-delta.json")
	b.report.Logs["go test -bench BenchmarkStageDelta ./stage"] = logPath
	t0 := b.now()
	b.logf("host: go test -bench BenchmarkStageDelta ./stage (delta against a whole pull, 127.0.0.1 and 100 Mbit/s), %d runs", n)
	res, err := goBench(b.root, "./stage", "^BenchmarkStageDelta$", n, logPath)
	errs := ""
	if err != nil {
		errs = err.Error()
		b.logf("%v", err)
	}
	load := b.watch.during(t0, b.now())
	for _, link := range []struct{ id, name, budget string }{
		{"127.0.0.1", "127.0.0.1", "≤ 1.2"},
		{"100Mbit", "a 100 Mbit/s link", "≤ 0.25 (time falls with the bytes)"},
	} {
		m := res["BenchmarkStageDelta/link="+link.id]
		d, f := m.get("delta-s", n), m.get("full-s", n)
		d.Unit, f.Unit = "s", "s"
		f.Label = "the whole image (--no-delta), same run"
		r := m.get("delta/full", n)
		r.Unit, r.Label = "×", "delta / whole, run by run"
		fig := &Figure{ID: "delta-time-" + link.id, Name: "delta staging of a 64 MiB image (64 KiB changed, 100 KiB appended) over v1 in slot a, from Debian's docker-registry through " + link.name,
			Measured: d, Baseline: &f, Ratio: &r, Budget: link.budget, Load: load}
		if v, ok := m["fetched-%"]; ok {
			fig.Note = fmt.Sprintf("the registry sent %.0f bytes for the delta, %.0f for the whole image (%.2f%%)", m["delta-bytes"], m["full-bytes"], v)
		}
		limit := 1.2
		if link.id != "127.0.0.1" {
			limit = 0.25
		}
		fig.Pass = r.Runs > 0 && r.Value <= limit
		b.add(fig, errs)
	}
	b.realOSDelta(g)
}

// realOSDelta: a disk whose slot a holds the real OS with deltaPin one
// version older (cloud kernel); what the registry sends when the real OS as
// built today (the package upgraded, the same kernel) is staged on it, and
// when it is staged on the generic kernel (a kernel bump).
func (b *bench) realOSDelta(g *guest) {
	ctx := context.Background()
	patch := &Figure{ID: "delta-realos-patch", Name: "delta: bytes fetched for the real OS with one Debian package upgraded (" + deltaPin + "), the same kernel", Budget: "≤ 15% of the image"}
	bump := &Figure{ID: "delta-realos-kernel", Name: "delta: bytes fetched for the real OS on a new kernel (cloud → generic) and its modules", Budget: "≤ 60% of the image"}
	fail := func(err error) { b.add(patch, err.Error()); b.add(bump, err.Error()) }
	old, cur, err := olderVersion(deltaPin)
	if err != nil {
		fail(err)
		return
	}
	b.logf("delta: the real OS with %s %s (v1) and %s (today's)", deltaPin, old, cur)
	// Today's first: building it removes the other images of the cache.
	v2Root, err := realos.Build(ctx, b.root, b.logf)
	if err != nil {
		fail(err)
		return
	}
	v1Root, err := realos.BuildPinned(ctx, b.root, []string{deltaPin + "=" + old}, b.logf)
	if err != nil {
		fail(err)
		return
	}
	dir := filepath.Join(g.dir, "delta")
	os.MkdirAll(dir, 0o755)
	slot := func(root, flavor, version string) (string, error) {
		out := filepath.Join(dir, fmt.Sprintf("initramfs-%s-%s", flavor, version))
		return out, g.realOSInitramfs(root, flavor, version, out)
	}
	v1, err := slot(v1Root.Path, "cloud", "v1")
	if err != nil {
		fail(err)
		return
	}
	img := filepath.Join(dir, "disk.img")
	os.Remove(img)
	if _, err := bootdisk.Init(ctx, img, bootdisk.Config{Layout: disk.Layout{Size: disk.Layout{}.MinSize()}, Kernel: g.kernels["cloud"].vmlinuz, Initramfs: v1, Cmdline: cmdline, Version: "v1"}); err != nil {
		fail(err)
		return
	}
	for _, c := range []struct {
		fig    *Figure
		flavor string
		limit  float64
	}{{patch, "cloud", 0.15}, {bump, "generic", 0.60}} {
		initrd, err := slot(v2Root.Path, c.flavor, "v2")
		if err != nil {
			b.add(c.fig, err.Error())
			continue
		}
		p, sent, err := stageFrom(img, dir, "v2-"+c.flavor, g.kernels[c.flavor].vmlinuz, initrd)
		if err != nil {
			b.add(c.fig, err.Error())
			continue
		}
		frac := float64(sent) / float64(p.Total)
		c.fig.Measured = Measure{Value: 100 * frac, Min: 100 * frac, Max: 100 * frac, Unit: "% of the image", Runs: 1, Label: "fetched"}
		var seeds []string
		for _, s := range p.Seeds {
			seeds = append(seeds, fmt.Sprintf("%s %.1f MiB", s.Name, float64(s.Bytes)/(1<<20)))
		}
		c.fig.Note = fmt.Sprintf("the registry sent %.1f of the image's %.1f MiB (Debian's docker-registry, counted by a proxy in front of it; the stager planned %.1f MiB in %d ranges); from the machine: %s",
			float64(sent)/(1<<20), float64(p.Total)/(1<<20), float64(p.Fetch)/(1<<20), p.Ranges, strings.Join(seeds, ", "))
		c.fig.Pass = p.Full == "" && frac <= c.limit
		b.add(c.fig, "")
	}
}

// stageFrom builds an installer image of kernel and initrd, pushes it to
// Debian's docker-registry, and stages it on img through a proxy that
// counts what the registry sends: it returns what `stager --dry-run`
// planned, the bytes the registry sent, and cancels the staging.
func stageFrom(img, dir, tag, kernel, initrd string) (*stage.Preview, int64, error) {
	built, err := installer.Build(installer.BuildOptions{Kernel: kernel, Initramfs: initrd, Cmdline: cmdline, Version: "v2", Arch: "amd64", TempDir: dir})
	if err != nil {
		return nil, 0, err
	}
	defer built.Close()
	reg, err := distribution.Start(filepath.Join(dir, "registry-"+tag))
	if err != nil {
		return nil, 0, err
	}
	defer reg.Stop()
	proxy := distribution.NewProxy(reg.Addr)
	srv := httptest.NewServer(proxy)
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/os:"+tag, name.Insecure)
	if err != nil {
		return nil, 0, err
	}
	if err := remote.Write(ref, built); err != nil {
		return nil, 0, fmt.Errorf("pushing to docker-registry: %w", err)
	}
	o := stage.Options{Disk: img, Image: ref.String(), Insecure: true}
	p, err := stage.Plan(context.Background(), o)
	if err != nil {
		return nil, 0, err
	}
	before := proxy.Bytes()
	if _, err := stage.Stage(context.Background(), o); err != nil {
		return nil, 0, err
	}
	sent := proxy.Bytes() - before
	if _, err := stage.Cancel(context.Background(), img, time.Now()); err != nil {
		return nil, 0, err
	}
	return p, sent, nil
}

// olderVersion returns a version of pkg that an APT source offers besides
// its candidate, and the candidate (from `apt-cache policy`: a version
// line, "VERSION PRIORITY", then its sources, "PRIORITY URL ...").
func olderVersion(pkg string) (old, cur string, err error) {
	out, err := exec.Command("apt-cache", "policy", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache policy %s: %v", pkg, err)
	}
	version := ""
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "***"))
		switch {
		case len(f) == 2 && f[0] == "Candidate:":
			cur = f[1]
		case len(f) == 2 && strings.Trim(f[1], "0123456789") == "" && strings.Trim(f[0], "0123456789") != "":
			version = f[0]
		case len(f) > 2 && strings.HasPrefix(f[1], "http") && version != "" && version != cur && old == "":
			old = version
		}
	}
	if old == "" {
		return "", cur, fmt.Errorf("APT offers no other version of %s than %s: no one-package upgrade to measure", pkg, cur)
	}
	return old, cur, nil
}

// realOSInitramfs writes the real OS's slot initramfs for root (an image
// of realos.Build) on the kernel of flavor, with prestage, to out.
func (g *guest) realOSInitramfs(root, flavor, version, out string) error {
	bin := filepath.Join(g.dir, "bin")
	outs := map[string]string{}
	for _, pkg := range []string{"./cmd/stager", "./qemu-tests/realos/init"} {
		o := filepath.Join(bin, "realos-"+filepath.Base(pkg))
		if err := gobuild.Static(g.root, "amd64", o, pkg); err != nil {
			return err
		}
		outs[pkg] = o
	}
	k := g.kernels[flavor]
	mods, err := initramfs.OpenModules(k.modules)
	if err != nil {
		return err
	}
	base, err := realos.Slot{Root: g.root, Image: root, Init: outs["./qemu-tests/realos/init"], Stager: outs["./cmd/stager"], Modules: mods, Version: version}.Archive()
	if err != nil {
		return err
	}
	return initramfs.WritePrestaged(out, base, initramfs.PrestageOptions{Binary: g.prestage, Modules: mods, Names: prestageModules})
}
