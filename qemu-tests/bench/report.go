package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"github.com/stagehand-dev/stagehand/internal/benchstat"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Measure is a figure as measured: the median of its runs, and their min
// and max.
type Measure struct {
	Label string  `json:"label,omitempty"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Runs  int     `json:"runs"`
}

// Figure is one row of the report.
type Figure struct {
	ID       string   `json:"id"`
	Name     string   `json:"figure"`
	Measured Measure  `json:"measured"`
	Baseline *Measure `json:"baseline,omitempty"`
	Ratio    *Measure `json:"ratio,omitempty"`
	Budget   string   `json:"budget"`
	Pass     bool     `json:"pass"`
	Note     string   `json:"note,omitempty"`
	Load     string   `json:"load,omitempty"` // what else ran meanwhile
	Error    string   `json:"error,omitempty"`
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	QEMU      string `json:"qemu"`
	Accel     string `json:"accel"`
	Go        string `json:"go"`
	Disk      string `json:"disk"`
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
}

// Report is report.json.
type Report struct {
	Started  time.Time         `json:"started"`
	Duration string            `json:"duration"`
	Machine  Machine           `json:"machine"`
	Quiet    string            `json:"quiet"`
	Figures  []*Figure         `json:"figures"`
	Details  []*Figure         `json:"details"`
	Runs     map[string]any    `json:"runs"`
	Notes    []string          `json:"notes,omitempty"`
	Logs     map[string]string `json:"logs"`
	Pass     bool              `json:"pass"`
}

// measure makes a Measure of samples.
func measure(label, unit string, xs []float64) Measure {
	m := Measure{Label: label, Unit: unit, Runs: len(xs)}
	if len(xs) == 0 {
		return m
	}
	m.Value, m.Min, m.Max = benchstat.Median(xs), slices.Min(xs), slices.Max(xs)
	return m
}

// num formats a value of unit.
func num(v float64, unit string) string {
	switch unit {
	case "ms":
		if v < 10 {
			return fmt.Sprintf("%.1f", v)
		}
		return fmt.Sprintf("%.0f", v)
	case "MB/s", "kB":
		return fmt.Sprintf("%.0f", v)
	case "s":
		return fmt.Sprintf("%.2f", v)
	case "%":
		return fmt.Sprintf("%+.1f", v)
	case "MiB":
		return fmt.Sprintf("%.1f", v)
	case "bytes":
		return fmt.Sprintf("%.2f", v/(1<<20))
	case "×":
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func unitName(unit string) string {
	switch unit {
	case "bytes":
		return "MiB"
	case "×", "":
		return ""
	case "%":
		return "%"
	}
	return unit
}

// String is "1.97 GB/s (1.90–2.01, 5 runs)".
func (m Measure) String() string {
	if m.Runs == 0 {
		return "—"
	}
	u := unitName(m.Unit)
	if u != "" && u != "%" {
		u = " " + u
	}
	s := num(m.Value, m.Unit) + u
	if m.Runs > 1 {
		s += fmt.Sprintf(" (%s–%s, %d runs)", num(m.Min, m.Unit), num(m.Max, m.Unit), m.Runs)
	}
	if m.Label != "" {
		s = m.Label + ": " + s
	}
	return s
}

func (f *Figure) result() string {
	switch {
	case f.Error != "":
		return "**error**"
	case f.Budget == "":
		return "—"
	case f.Pass:
		return "pass"
	}
	return "**FAIL**"
}

func orDash(m *Measure) string {
	if m == nil {
		return "—"
	}
	return m.String()
}

// table writes figures as a Markdown table.
func table(w *bufio.Writer, figs []*Figure) {
	fmt.Fprintln(w, "| figure | measured | baseline (same run) | ratio | budget | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, f := range figs {
		measured := f.Measured.String()
		if f.Error != "" {
			measured = "error: " + f.Error
		}
		if f.Load != "" {
			measured += " ⚠"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", f.Name, cell(measured), cell(orDash(f.Baseline)), cell(orDash(f.Ratio)), cell(cmp.Or(f.Budget, "—")), f.result())
	}
}

func cell(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// markdown renders report.md.
func (r *Report) markdown() string {
	var sb strings.Builder
	w := bufio.NewWriter(&sb)
	fmt.Fprintf(w, "# stagehand bench, %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	m := r.Machine
	fmt.Fprintf(w, "Machine: %s, %d cores, %d MiB; Linux %s; %s, %s; %s; files on %s. Load average %s at the start, %s at the end. %s. `make bench` took %s.\n\n",
		m.CPU, m.Cores, m.MemoryMiB, m.Kernel, m.QEMU, m.Accel, m.Go, m.Disk, m.LoadStart, m.LoadEnd, r.Quiet, r.Duration)
	fmt.Fprintln(w, "Medians, with the min–max of the runs; the ratio is figure/baseline unless said; ⚠ marks a figure measured while other QEMU processes ran (see notes).")
	fmt.Fprintln(w)
	table(w, r.Figures)
	fmt.Fprintln(w)
	verdict := "every budget holds"
	if !r.Pass {
		var missed []string
		for _, f := range r.Figures {
			if !f.Pass {
				missed = append(missed, f.ID)
			}
		}
		verdict = "missed: " + strings.Join(missed, ", ")
	}
	fmt.Fprintf(w, "Result: %s.\n\n", verdict)
	fmt.Fprintln(w, "## Details")
	fmt.Fprintln(w)
	table(w, r.Details)
	fmt.Fprintln(w)
	var notes []string
	for _, f := range append(slices.Clone(r.Figures), r.Details...) {
		if f.Note != "" {
			notes = append(notes, fmt.Sprintf("- **%s**: %s", f.Name, f.Note))
		}
		if f.Load != "" {
			notes = append(notes, fmt.Sprintf("- **%s** ⚠ %s", f.Name, f.Load))
		}
	}
	for _, n := range r.Notes {
		notes = append(notes, "- "+n)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "## Notes")
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "## Logs")
	fmt.Fprintln(w)
	var keys []string
	for k := range r.Logs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "- %s: `%s`\n", k, r.Logs[k])
	}
	w.Flush()
	return sb.String()
}

func (r *Report) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(dir+"/report.json", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(dir+"/report.md", []byte(r.markdown()), 0o644)
}

// describe says what machine this is.
func describe(dir string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Accel: "TCG", LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(strings.Split(string(b), "\n")[0], "MemTotal:")), "%d", &kb)
		m.MemoryMiB = kb / 1024
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		m.QEMU = strings.TrimSpace(strings.Split(string(out), "\n")[0])
		m.QEMU = strings.Replace(m.QEMU, "QEMU emulator version", "QEMU", 1)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil && !strings.Contains(string(b), " vmx") && !strings.Contains(string(b), " svm") {
		m.Accel = "TCG, no KVM (the CPU shows no vmx/svm)"
	} else {
		m.Accel = "TCG (the harness's -accel tcg)"
	}
	if out, err := exec.Command("df", "--output=source,fstype", dir).Output(); err == nil {
		if l := strings.Split(strings.TrimSpace(string(out)), "\n"); len(l) == 2 {
			m.Disk = strings.Join(strings.Fields(l[1]), " ")
		}
	}
	return m
}
