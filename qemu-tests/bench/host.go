package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// metrics are one benchmark's results by unit (b.ReportMetric's and
// ns/op).
type metrics map[string]float64

// get returns the median, min and max of unit as a Measure of n runs
// (min and max from unit-lo and unit-hi, when the benchmark reports them).
func (m metrics) get(unit string, n int) Measure {
	v, ok := m[unit]
	if !ok {
		return Measure{Unit: unit}
	}
	me := Measure{Value: v, Min: v, Max: v, Unit: unit, Runs: n}
	if lo, ok := m[unit+"-lo"]; ok {
		me.Min = lo
	}
	if hi, ok := m[unit+"-hi"]; ok {
		me.Max = hi
	}
	return me
}

// resultLine is a benchmark's result: name (without the -GOMAXPROCS
// suffix), iterations, then value-unit pairs.
var resultLine = regexp.MustCompile(`^(Benchmark\S*?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// goBench runs `go test -run '^$' -bench pattern -benchtime Nx -count 1
// -json` on pkg, keeps its output in logPath, and returns the metrics of
// each benchmark.
func goBench(root, pkg, pattern string, n int, logPath string) (map[string]metrics, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "test", "-run", "^$", "-bench", pattern, "-benchtime", fmt.Sprintf("%dx", n),
		"-count", "1", "-timeout", "20m", "-json", pkg)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	os.WriteFile(logPath, append(out, stderr.Bytes()...), 0o644)
	// The benchmark lines come in pieces (the name before the run, the
	// figures after): put the output back together first.
	var text strings.Builder
	failed := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct{ Action, Output, Test string }
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Action {
		case "output":
			text.WriteString(ev.Output)
		case "fail":
			failed = true
		}
	}
	res := map[string]metrics{}
	for _, l := range strings.Split(text.String(), "\n") {
		m := resultLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		f := strings.Fields(m[3])
		ms := metrics{}
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				ms[f[i+1]] = v
			}
		}
		res[m[1]] = ms
	}
	if err != nil || failed {
		tail := text.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return res, fmt.Errorf("go test -bench %s %s failed (%v; %s): %s", pattern, pkg, err, strings.TrimSpace(stderr.String()), tail)
	}
	return res, nil
}

// hostFigures runs the host benchmarks and returns the figures: staging
// against a plain pull, the apply's slot write against an O_DIRECT write,
// stager's peak RSS, and the time of staging and applying by size.
func (b *bench) hostFigures() {
	n := *hostRuns
	logStage := filepath.Join(b.out, "go-bench-stage.json")
	logApply := filepath.Join(b.out, "go-bench-apply.json")
	b.report.Logs["go test -bench ./stage"] = logStage
	b.report.Logs["go test -bench ./apply"] = logApply

	t0 := b.now()
	b.logf("host: go test -bench ./stage (staging against a plain pull, by size, stager's peak RSS), %d runs each", n)
	st, err := goBench(b.root, "./stage", "^(BenchmarkStageVsPull|BenchmarkStageSize|BenchmarkStageRSS)$", n, logStage)
	stageErr := ""
	if err != nil {
		stageErr = err.Error()
		b.logf("%v", err)
	}
	load := b.watch.during(t0, b.now())

	vs := st["BenchmarkStageVsPull"]
	f := &Figure{ID: "staging", Name: "staging throughput: a 256 MiB image from a registry on 127.0.0.1 into an image file (hash, verify, O_DIRECT, sync)",
		Budget: "ratio ≥ 1.0", Load: load}
	f.Measured = mbps(vs.get("stage-s", n), 256)
	base := mbps(vs.get("pull-s", n), 256)
	base.Label = "go-containerregistry pull to an OCI layout"
	f.Baseline = &base
	r := vs.get("ratio", n)
	r.Unit, r.Label = "×", "pull time / stage time"
	f.Ratio = &r
	f.Pass = r.Runs > 0 && r.Value >= 1.0
	b.add(f, stageErr)

	rss := st["BenchmarkStageRSS"]
	p64, p512 := rss.get("peak-RSS-MiB-64", n), rss.get("peak-RSS-MiB-512", n)
	p64.Unit, p512.Unit = "MiB", "MiB"
	f = &Figure{ID: "stager-rss-64", Name: "peak RSS of stager staging a 64 MiB image (/usr/bin/time)", Measured: p64, Budget: "≤ 64 MiB", Load: load}
	f.Pass = p64.Runs > 0 && p64.Value <= 64
	b.add(f, stageErr)
	f = &Figure{ID: "stager-rss-512", Name: "peak RSS of stager staging a 512 MiB image", Measured: p512, Budget: "≤ 64 MiB, within 10% of the 64 MiB image's", Load: load}
	if p64.Runs > 0 && p512.Runs > 0 {
		ratio := Measure{Label: "512 MiB / 64 MiB", Value: p512.Value / p64.Value, Min: p512.Value / p64.Value, Max: p512.Value / p64.Value, Unit: "×", Runs: 1}
		f.Ratio = &ratio
		f.Pass = p512.Value <= 64 && ratio.Value >= 0.9 && ratio.Value <= 1.1
	}
	b.add(f, stageErr)

	t1 := b.now()
	b.logf("host: go test -bench ./apply (apply by size, slot write against O_DIRECT), %d runs each", n)
	ap, err := goBench(b.root, "./apply", "^(BenchmarkApply|BenchmarkNoopBoot)$", n, logApply)
	applyErr := ""
	if err != nil {
		applyErr = err.Error()
		b.logf("%v", err)
	}
	load = b.watch.during(t1, b.now())
	sizes := []int{64, 256, 512}
	for _, size := range sizes {
		a := ap[fmt.Sprintf("BenchmarkApply/size=%dMiB", size)]
		f := &Figure{ID: fmt.Sprintf("apply-write-%d", size),
			Name: fmt.Sprintf("apply throughput: writing slot b from a %d MiB payload (InstallSlot + fdatasync; the read-back check apart)", size),
			Load: load}
		f.Measured = mbps(a.get("write-s", n), size)
		d := mbps(a.get("direct-s", n), size)
		d.Label = "O_DIRECT write of the same bytes to the same clusters, 4 MiB requests"
		f.Baseline = &d
		r := a.get("write/direct", n)
		r.Unit, r.Label = "×", "throughput, run by run"
		f.Ratio = &r
		if w, d := a.get("write-s", n), a.get("direct-s", n); w.Runs > 0 && d.Runs > 0 {
			f.Note = fmt.Sprintf("the write takes %.0f ms more than the direct write (medians): InstallSlot's work besides the data (old entry removed, files replaced, FAT allocations written by go-diskfs, three ESP syncs, the entry)", (w.Value-d.Value)*1000)
		}
		if size == 256 {
			f.Budget = "≥ 0.9"
			f.Pass = r.Runs > 0 && r.Value >= 0.9
			b.add(f, applyErr)
		} else {
			b.detail(f, applyErr)
		}
		c := a.get("check-s", n)
		b.detail(&Figure{ID: fmt.Sprintf("apply-check-%d", size), Name: fmt.Sprintf("apply: the read-back check of slot b (%d MiB payload)", size), Measured: mbps(c, size), Load: load}, applyErr)
		v := a.get("verify-s", n)
		v.Unit = "s"
		b.detail(&Figure{ID: fmt.Sprintf("apply-verify-%d", size), Name: fmt.Sprintf("apply: before the write (payload read from STAGE and hashed, META committed; %d MiB, cold page cache)", size), Measured: v, Load: load}, applyErr)
	}

	nb := ap["BenchmarkNoopBoot"].get("noop-ms", n)
	nb.Unit = "ms"
	b.hostNoop = nb
	b.detail(&Figure{ID: "noop-host", Name: "prestage's decision on a no-op boot on the host: Open (META, ESP), Boot, Close on a disk image with the default layout (BenchmarkNoopBoot)", Measured: nb, Load: load}, applyErr)

	// Linear in the size: time(512)/time(64) within 8 ± 25%.
	lin := func(id, name string, m map[string]metrics, key, unit string, errs string, load string) {
		var t []Measure
		for _, size := range sizes {
			me := m[fmt.Sprintf(key, size)].get(unit, n)
			me.Unit, me.Label = "s", fmt.Sprintf("%d MiB", size)
			t = append(t, me)
		}
		f := &Figure{ID: id, Name: name, Budget: "time(512)/time(64) in [6, 10]", Load: load}
		f.Measured = Measure{Label: "512 MiB / 64 MiB", Unit: "×", Runs: t[2].Runs}
		if t[0].Runs > 0 && t[2].Runs > 0 {
			v := t[2].Value / t[0].Value
			f.Measured.Value, f.Measured.Min, f.Measured.Max = v, t[2].Min/t[0].Max, t[2].Max/t[0].Min
			f.Pass = v >= 6 && v <= 10
		}
		f.Note = fmt.Sprintf("%s; %s; %s (medians, min–max)", t[0], t[1], t[2])
		if t[1].Runs > 0 && t[2].Runs > 0 {
			// t = fixed + per·size through the 256 and 512 MiB medians.
			per := (t[2].Value - t[1].Value) / 256
			fixed := t[1].Value - 256*per
			f.Note += fmt.Sprintf("; as fixed + per-MiB time through 256 and 512 MiB: %.0f ms + %.2f ms/MiB, so 64 MiB would take %.0f ms", fixed*1000, per*1000, (fixed+64*per)*1000)
		}
		b.add(f, errs)
	}
	lin("staging-linear", "staging time by payload size (64, 256, 512 MiB), stage.Stage from a registry on 127.0.0.1", st, "BenchmarkStageSize/size=%dMiB", "stage-s", stageErr, b.watch.during(t0, t1))
	lin("apply-linear", "apply time by payload size (64, 256, 512 MiB): Open, Boot (verify, write, check, arm), Close", ap, "BenchmarkApply/size=%dMiB", "apply-s", applyErr, load)
}

// mbps turns a Measure of seconds for sizeMiB into MB/s.
func mbps(s Measure, sizeMiB int) Measure {
	if s.Runs == 0 {
		return Measure{Unit: "MB/s"}
	}
	mb := float64(sizeMiB) * (1 << 20) / 1e6
	return Measure{Label: s.Label, Value: mb / s.Value, Min: mb / s.Max, Max: mb / s.Min, Unit: "MB/s", Runs: s.Runs}
}
