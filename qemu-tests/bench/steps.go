package main

import (
	"errors"
	"regexp"
	"strconv"
	"time"
)

// The reboot into v2, step by step: where the time between "trial armed"
// and v2's init's first line goes. Each step is read from one run's
// console with the finest clock that spans it: the timestamps of prestage's
// lines (it logs through /dev/kmsg) while one kernel runs, the host's
// receive times across the jump from v1's kernel to v2's (the kernel's
// clock restarts) and from v2's prestage to its init (whose lines carry no
// timestamp).

// rebootStep is one step of the reboot into v2.
type rebootStep struct {
	id, name string
	of       string // the step it is part of; "" for the steps that add up to the whole
}

// rebootSteps are the steps in the order they happen; those with of == ""
// add up to "trial armed → v2's init's first line".
var rebootSteps = []rebootStep{
	{"commit", "trial armed → prestage's decision: META's trial committed (v1's kernel clock)", ""},
	{"prepare", "decision → kexec or firmware reboot line: the kexec's slot read and loaded, the disk closed and synced (v1's kernel clock)", ""},
	{"read", "reading slot b back into memory for kexec_file_load (prestage's log)", "prepare"},
	{"load", "kexec_file_load (prestage's log)", "prepare"},
	{"close", "kexec_file_load done → kexec line: the disk closed, unmounted, synced (v1's kernel clock)", "prepare"},
	{"shutdown", "kexec or reboot line → v1's kernel's last line (sync, devices shut down; v1's kernel clock)", ""},
	{"handover", "v1's kernel's last line → v2's kernel clock starts (host): kexec: purgatory (checks the segments' SHA-256), the kernel decompressing; firmware: reset, OVMF, systemd-boot, the EFI stub", ""},
	{"ovmf", "firmware: v1's last line → OVMF starts the boot entry (host)", "handover"},
	{"loader", "firmware: OVMF starts systemd-boot → the EFI stub's first line (systemd-boot loading kernel and initramfs from the ESP; host)", "handover"},
	{"stub", "firmware: the EFI stub's first line → v2's kernel clock starts (host)", "handover"},
	{"kernel", "v2's kernel clock start → it runs /prestage (v2's kernel clock)", ""},
	{"unpack", "v2's kernel unpacking the initramfs (Trying to unpack → Freeing initrd memory; v2's kernel clock, beside other initcalls)", "kernel"},
	{"exec", "v2's kernel runs /prestage → prestage's main (the Go runtime starting; v2's kernel clock less prestage's hand-off time)", ""},
	{"modules", "v2's prestage loading modules (its log)", ""},
	{"own", "v2's prestage's own work: the trial boot counted, META committed (its log: hand-off less modules)", ""},
	{"init", "v2's prestage's hand-off line → v2's init's first line (host)", ""},
}

// The console lines the steps are read from, besides guest.go's.
var (
	decisionLine = regexp.MustCompile(`stagehand: (?:kexec|reboot): `)
	slotRead     = regexp.MustCompile(`stagehand: kexec into slot \S+ after .*, slot read in (\S+)`)
	kernelBanner = regexp.MustCompile(`^\[\s*\d+\.\d+\] Linux version `)
	unpackStart  = regexp.MustCompile(`\] Trying to unpack rootfs image as initramfs`)
	unpackEnd    = regexp.MustCompile(`\] Freeing initrd memory: `)
	bootEntry    = regexp.MustCompile(`BdsDxe: starting `)
	efiStub      = regexp.MustCompile(`^EFI stub: `)
)

// index returns the index of the first of lines[from:to] to match re, or -1.
func index(lines []line, from, to int, re *regexp.Regexp) int {
	for i := max(from, 0); i < to && i < len(lines); i++ {
		if re.MatchString(lines[i].text) {
			return i
		}
	}
	return -1
}

// stamp is a kernel console line's timestamp, in seconds.
func stamp(l line) (float64, bool) {
	m := kernelTS.FindStringSubmatch(l.text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// stepsOf reads the steps of the reboot into v2, in ms by id, from the
// console lines of one run; a step whose lines are missing is left out.
// It fails when the lines that delimit the reboot are missing.
func stepsOf(lines []line) (map[string]float64, error) {
	end := len(lines)
	trial := index(lines, 0, end, trialArmed)
	leave := index(lines, trial, end, leaveLine)
	banner := index(lines, leave, end, kernelBanner)
	first := index(lines, banner, end, osFirstLine)
	switch {
	case trial < 0:
		return nil, errors.New("no 'applying → trial' line")
	case leave < 0:
		return nil, errors.New("no kexec or firmware reboot line after 'applying → trial'")
	case banner < 0:
		return nil, errors.New("no v2 kernel's first line (Linux version) after the kexec or reboot line")
	case first < 0:
		return nil, errors.New("no v2's init's first line")
	}
	steps := map[string]float64{}
	// span sets step id to b − a, given in seconds, when both are known.
	span := func(id string, a, b float64, ok bool) {
		if ok {
			steps[id] = (b - a) * 1000
		}
	}
	// at is the v1 kernel timestamp of line i.
	at := func(i int) (float64, bool) {
		if i < 0 {
			return 0, false
		}
		return stamp(lines[i])
	}

	// v1, up to the jump: prestage's lines, by v1's kernel clock.
	t, okT := at(trial)
	l, okL := at(leave)
	if d, ok := at(index(lines, trial, leave, decisionLine)); ok {
		span("commit", t, d, okT)
		span("prepare", d, l, okL)
		if li := index(lines, trial, leave, kexecLoaded); li >= 0 {
			load := ms(kexecLoaded.FindStringSubmatch(lines[li].text)[1])
			steps["load"] = load
			loaded, ok := at(li)
			span("close", loaded, l, ok && okL)
			if m := slotRead.FindStringSubmatch(lines[leave].text); m != nil {
				steps["read"] = ms(m[1])
			} else if ok { // a prestage that does not say: the rest of decision → loaded
				steps["read"] = (loaded-d)*1000 - load
			}
		}
	}
	last := -1 // v1's kernel's last line
	for i := leave; i < banner; i++ {
		if kernelTS.MatchString(lines[i].text) {
			last = i
		}
	}
	if s, ok := at(last); ok {
		span("shutdown", l, s, okL)
	}

	// The jump, by the host's clock: v2's kernel clock starts at the
	// smallest receive time − timestamp over its lines stamped after it
	// started (those stamped 0 were printed before).
	var v2 []line
	for _, x := range lines[banner:first] {
		if s, ok := stamp(x); ok && s > 0 {
			v2 = append(v2, x)
		}
	}
	start, _, okStart := kernelStart(v2)
	if last >= 0 && okStart {
		steps["handover"] = millis(start - lines[last].at)
		if e := index(lines, last, banner, bootEntry); e >= 0 {
			steps["ovmf"] = millis(lines[e].at - lines[last].at)
			if s := index(lines, e, banner, efiStub); s >= 0 {
				steps["loader"] = millis(lines[s].at - lines[e].at)
				steps["stub"] = millis(start - lines[s].at)
			}
		}
	}

	// v2, by its kernel's clock and its prestage's log.
	run, okRun := at(index(lines, banner, first, runInit))
	if okRun {
		steps["kernel"] = run * 1000
	}
	u0, ok0 := at(index(lines, banner, first, unpackStart))
	u1, ok1 := at(index(lines, banner, first, unpackEnd))
	span("unpack", u0, u1, ok0 && ok1)
	var modules float64
	if i := index(lines, banner, first, modulesLine); i >= 0 {
		modules = ms(modulesLine.FindStringSubmatch(lines[i].text)[2])
		steps["modules"] = modules
	}
	if h := index(lines, banner, first, handoffLine); h >= 0 {
		pre := ms(handoffLine.FindStringSubmatch(lines[h].text)[1])
		if hs, ok := at(h); ok && okRun {
			steps["exec"] = (hs-run)*1000 - pre
		}
		if _, ok := steps["modules"]; ok {
			steps["own"] = pre - modules
		}
		steps["init"] = millis(lines[first].at - lines[h].at)
	}
	return steps, nil
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// accounted is the sum of the steps that add up to the whole, in ms.
func accounted(steps map[string]float64) float64 {
	var sum float64
	for _, s := range rebootSteps {
		if s.of == "" {
			sum += steps[s.id]
		}
	}
	return sum
}
