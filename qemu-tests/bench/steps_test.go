package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// readConsole reads back a console.log as powerOn writes it: each line
// its host receive time in seconds, a space, the console's bytes.
func readConsole(t *testing.T, path string) []line {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []line
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		at, text, ok := strings.Cut(strings.TrimLeft(sc.Text(), " "), " ")
		s, err := strconv.ParseFloat(at, 64)
		if !ok || err != nil {
			t.Fatalf("%s: not a console.log line: %q", path, sc.Text())
		}
		lines = append(lines, line{time.Duration(s * float64(time.Second)), ansi.ReplaceAllString(text, "")})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// The fixtures are the console logs of make bench's first kexec and
// firmware runs of c3caccb (prestage's kexec line did not yet say how
// long the slot read took), from "staged → applying" on, v2's kernel's
// lines cut to those the steps read, the one that dates its clock's start
// and every 40th. The figures below are worked out by hand from them.
func TestStepsOf(t *testing.T) {
	for _, tc := range []struct {
		log        string
		want       map[string]float64
		total, off float64 // trial armed → v2's first line, host; what the steps do not account for
	}{
		{"reboot-kexec-1.log", map[string]float64{
			"commit":   5592.456 - 5547.648,
			"prepare":  7528.060 - 5592.456,
			"read":     7470.265 - 5592.456 - 1474, // decision → loaded less kexec_file_load
			"load":     1474,
			"close":    7528.060 - 7470.265,
			"shutdown": 7532.440 - 7528.060, // → "kexec_core: Starting new kernel"
			"handover": 16761.558 - 12729,   // the Spectre line, received 17.116 at 0.354442, dates v2's clock
			"kernel":   2294.815,
			"unpack":   1639.883 - 1516.106,
			"exec":     3184.069 - 2294.815 - 596,
			"modules":  189,
			"own":      596 - 189,
			"init":     20169 - 19979,
		}, 20169 - 10745, 32.581},
		{"reboot-firmware-1.log", map[string]float64{
			"commit":   5851.959 - 5814.723,
			"prepare":  5904.320 - 5851.959,
			"shutdown": 5909.640 - 5904.320, // → "reboot: machine restart"
			"handover": 18339 - 10704,       // received 18.343 at 0.004000
			"ovmf":     14721 - 10704,
			"loader":   18027 - 14721,
			"stub":     18339 - 18027,
			"kernel":   2338.531,
			"unpack":   1595.143 - 1275.552,
			"exec":     3083.114 - 2338.531 - 546,
			"modules":  174,
			"own":      546 - 174,
			"init":     21748 - 21526,
		}, 21748 - 10609, 103.969},
	} {
		t.Run(tc.log, func(t *testing.T) {
			got, err := stepsOf(readConsole(t, "testdata/"+tc.log))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 0.001)); d != "" {
				t.Errorf("steps in ms (-want, +got):\n%s", d)
			}
			if off := tc.total - accounted(got); off < tc.off-0.01 || off > tc.off+0.01 {
				t.Errorf("the steps account for all but %.3f ms of %.0f ms, want all but %.3f", off, tc.total, tc.off)
			}
		})
	}
}

// TestStepsOfSlotRead: a prestage that says how long the slot read took is
// taken at its word.
func TestStepsOfSlotRead(t *testing.T) {
	lines := readConsole(t, "testdata/reboot-kexec-1.log")
	for i, l := range lines {
		if leaveLine.MatchString(l.text) {
			lines[i].text += ", slot read in 398ms"
		}
	}
	got, err := stepsOf(lines)
	if err != nil {
		t.Fatal(err)
	}
	if got["read"] != 398 {
		t.Errorf("read = %v ms, want 398 (the kexec line's)", got["read"])
	}
}

// TestStepsOfCut: a console cut short says which line it lacks.
func TestStepsOfCut(t *testing.T) {
	lines := readConsole(t, "testdata/reboot-kexec-1.log")
	for _, tc := range []struct {
		cut  string // the line the console is cut before
		want string
	}{
		{"stagehand: applying → trial", "no 'applying → trial' line"},
		{"stagehand: kexec into slot b", "no kexec or firmware reboot line"},
		{"Linux version 6.1.0-57-amd64", "no v2 kernel's first line"},
		{"stagehand-testos: ", "no v2's init's first line"},
	} {
		i := 0
		for i < len(lines) && !strings.Contains(lines[i].text, tc.cut) {
			i++
		}
		if _, err := stepsOf(lines[:i]); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("cut before %q: %v, want %q", tc.cut, err, tc.want)
		}
	}
}
