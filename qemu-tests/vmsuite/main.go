// Command vmsuite runs the VM tests (make qemu-test) in as many lanes as
// the machine has guest slots, each lane a sequence of go test processes,
// the tests dealt to the lanes by their recorded durations (longest first,
// each to the lane that ends soonest), so that the lanes end together. It
// prints go test's own lines for each package (ok, FAIL, a failing test's
// output), then the ten slowest tests with their seconds, and records the
// durations for the next run's plan.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

var (
	pkgs     = flag.String("pkgs", "./qemu-tests/... ./grub/install ./bootdisk", "packages whose tests to run, space-separated; outside qemu-tests only the tests named TestQEMU… (their unit tests run in make unit)")
	tags     = flag.String("tags", "vm", "build tags")
	lanes    = flag.Int("lanes", 0, "go test processes at once (0: the machine's guest slots)")
	timeout  = flag.Duration("timeout", 40*time.Minute, "go test -timeout of each process")
	recorded = flag.String("durations", "qemu-tests/vmsuite/durations.txt", "committed durations (seconds per test) to plan with")
	out      = flag.String("out", "build/qemu-test", "directory for the lanes' logs and the durations of this run")
)

// unknown is the duration assumed for a test with no record.
const unknown = 120 * time.Second

// test is one top-level test of one package.
type test struct {
	pkg, name string
	est       time.Duration
}

func (t test) key() string { return t.pkg + " " + t.name }

// result is what a run said of a test.
type result struct {
	test
	lane    int
	elapsed time.Duration
	action  string // pass, fail, skip
}

func main() {
	flag.Parse()
	if *lanes == 0 {
		*lanes = vm.DefaultSlots().N
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	tests, err := list()
	if err != nil {
		fail(err)
	}
	last := filepath.Join(*out, "durations.txt")
	durs := readDurations(*recorded)
	for k, v := range readDurations(last) { // this machine's last run
		durs[k] = v
	}
	for i := range tests {
		tests[i].est = unknown
		if d, ok := durs[tests[i].key()]; ok {
			tests[i].est = d
		}
	}
	plan := deal(tests, *lanes)
	for i, l := range plan {
		var names []string
		var sum time.Duration
		for _, t := range l {
			names = append(names, t.name)
			sum += t.est
		}
		fmt.Printf("vmsuite: lane %d, about %d s: %s\n", i+1, int(sum.Seconds()), strings.Join(names, " "))
	}

	start := time.Now()
	var (
		mu      sync.Mutex
		results []result
		failed  bool
		wg      sync.WaitGroup
		ends    = make([]time.Duration, len(plan))
	)
	for i, l := range plan {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log, err := os.Create(filepath.Join(*out, fmt.Sprintf("lane-%d.log", i+1)))
			if err != nil {
				fail(err)
			}
			defer log.Close()
			for _, pt := range byPackage(l) {
				rs, report, ok := run(pt, i+1, log)
				mu.Lock()
				results = append(results, rs...)
				failed = failed || !ok
				os.Stdout.Write(report)
				mu.Unlock()
			}
			ends[i] = time.Since(start)
		}()
	}
	wg.Wait()

	sort.Slice(results, func(i, j int) bool { return results[i].elapsed > results[j].elapsed })
	fmt.Printf("\nvmsuite: the ten slowest VM tests (of %d; lanes' logs in %s)\n", len(results), *out)
	fmt.Printf("  %8s  %-4s  %-5s  %s\n", "seconds", "lane", "", "test")
	for _, r := range results[:min(10, len(results))] {
		fmt.Printf("  %8.1f  %-4d  %-5s  %s\n", r.elapsed.Seconds(), r.lane, r.action, strings.TrimPrefix(r.pkg, "github.com/stagehand-dev/stagehand/")+" "+r.name)
	}
	for i, e := range ends {
		fmt.Printf("vmsuite: lane %d ended after %d s\n", i+1, int(e.Seconds()))
	}
	fmt.Printf("vmsuite: %d s in all\n", int(time.Since(start).Seconds()))
	for _, r := range results {
		if r.action != "fail" {
			durs[r.key()] = r.elapsed
		}
	}
	if err := writeDurations(last, durs); err != nil {
		fail(err)
	}
	if failed {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "vmsuite: %v\n", err)
	os.Exit(2)
}

// list asks go test for the top-level tests of each package.
func list() ([]test, error) {
	cmd := exec.Command("go", append([]string{"test", "-tags", *tags, "-list", "^Test"}, strings.Fields(*pkgs)...)...)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing the tests: go test -list: %w", err)
	}
	var tests, pending []test
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case f[0] == "ok" && len(f) >= 2:
			for _, t := range pending {
				t.pkg = f[1]
				if !strings.Contains(t.pkg, "/qemu-tests") && !strings.HasPrefix(t.name, "TestQEMU") {
					continue
				}
				tests = append(tests, t)
			}
			pending = nil
		case f[0] == "?":
		case strings.HasPrefix(f[0], "Test") && len(f) == 1:
			pending = append(pending, test{name: f[0]})
		}
	}
	if len(tests) == 0 {
		return nil, fmt.Errorf("go test -list found no tests in %s", *pkgs)
	}
	return tests, nil
}

// deal gives each test, longest first, to the lane with the least work.
func deal(tests []test, n int) [][]test {
	sort.SliceStable(tests, func(i, j int) bool { return tests[i].est > tests[j].est })
	plan := make([][]test, n)
	load := make([]time.Duration, n)
	for _, t := range tests {
		i := 0
		for j := range load {
			if load[j] < load[i] {
				i = j
			}
		}
		plan[i] = append(plan[i], t)
		load[i] += t.est
	}
	return plan
}

// byPackage groups a lane's tests by package, the package with the most
// work first.
func byPackage(l []test) [][]test {
	idx := map[string]int{}
	var out [][]test
	for _, t := range l {
		i, ok := idx[t.pkg]
		if !ok {
			i = len(out)
			idx[t.pkg] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], t)
	}
	return out
}

// event is one line of go test -json (test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// run runs one package's tests of a lane with go test -json, writes the
// whole verbose output to log, and returns the results and what go test
// would have printed without -v: the output of the tests that failed and
// the package's own lines (ok, FAIL, a panic).
func run(tests []test, lane int, log io.Writer) ([]result, []byte, bool) {
	var names []string
	for _, t := range tests {
		names = append(names, t.name)
	}
	pkg := tests[0].pkg
	args := []string{"test", "-tags", *tags, "-count=1", "-json", "-timeout", timeout.String(), "-run", "^(" + strings.Join(names, "|") + ")$", pkg}
	fmt.Fprintf(log, "$ go %s\n", strings.Join(args, " "))
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	var report bytes.Buffer
	byName := map[string]*bytes.Buffer{}
	var results []result
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Fprintln(&report, sc.Text())
			continue
		}
		io.WriteString(log, e.Output)
		top, _, sub := strings.Cut(e.Test, "/")
		switch {
		case e.Test == "" && (e.Action == "output" || e.Action == "build-output"):
			report.WriteString(e.Output)
		case e.Action == "output":
			if strings.HasPrefix(e.Output, "=== ") {
				continue
			}
			if byName[top] == nil {
				byName[top] = &bytes.Buffer{}
			}
			byName[top].WriteString(e.Output)
		case e.Test != "" && !sub && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
			if e.Action == "fail" && byName[top] != nil {
				report.Write(byName[top].Bytes())
			}
			delete(byName, top)
			results = append(results, result{test{pkg: pkg, name: top}, lane, time.Duration(e.Elapsed * float64(time.Second)), e.Action})
		}
	}
	err = cmd.Wait()
	// A test cut short (the binary's timeout) never reported: its output.
	for _, b := range byName {
		report.Write(b.Bytes())
	}
	report.Write(stderr.Bytes())
	log.Write(stderr.Bytes())
	return results, report.Bytes(), err == nil
}

// readDurations reads "PACKAGE TEST SECONDS" lines; a missing file is
// empty.
func readDurations(path string) map[string]time.Duration {
	m := map[string]time.Duration{}
	b, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || strings.HasPrefix(l, "#") {
			continue
		}
		if s, err := strconv.ParseFloat(f[2], 64); err == nil {
			m[f[0]+" "+f[1]] = time.Duration(s * float64(time.Second))
		}
	}
	return m
}

func writeDurations(path string, m map[string]time.Duration) error {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# seconds each VM test took in its last passing run (qemu-tests/vmsuite)\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %.1f\n", k, m[k].Seconds())
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
