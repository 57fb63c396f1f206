//go:build vm

package qemutests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/bootloader"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// The power-cut campaign: QEMU is killed (SIGKILL, by its pid) at a moment
// of the upgrade found from a console line and a fixed delay, then the
// machine is powered on again with the same disk and firmware variables
// until it settles. What the guest had handed to the virtual disk survives
// the cut (QEMU wrote it to the image file), what it still held in its own
// page cache does not: a power cut for a disk without a volatile cache.
//
// The v1 test OS powers off at once; v2 confirms itself and powers off.
// Every cut must end on v1 in slot A or v2 in slot B, with META idle, its
// active slot good and the one running, that slot the loader's default
// with an uncounted entry, and an ESP that fsck.fat -n passes; no boot on
// the way may run a slot that META holds neither active nor on trial.

// cutPoint is a moment of the upgrade at which the power is cut: delay
// after the console shows markers, in order.
type cutPoint struct {
	name    string
	during  string // "apply" or "confirm"
	markers []*regexp.Regexp
	delay   time.Duration
	// v1Params go on slot a's command line (stagehand.kexec=0: the trial
	// is booted through the firmware, which consumes boot-once).
	v1Params string
	// flushes > 0 cuts once the confirm's flushes reached that many (the
	// test OS reports the disk's counters as they change).
	flushes int
}

var (
	trialCount    = regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2`)
	confirmStart  = regexp.MustCompile(`stagehand-testos: step confirm: start`)
	confirmedLine = regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b`)
	ioLine        = regexp.MustCompile(`stagehand-testos: io: vda writes=\d+ flushes=\d+\r?\n`)
	powerDownLine = regexp.MustCompile(`reboot: Power down`)
	firmwareBoot  = regexp.MustCompile(`BdsDxe: starting`)
	grubStart     = regexp.MustCompile(`stagehand: partition GUID of `) // the stagehand grub.cfg, at every start
	kexecBoot     = regexp.MustCompile(`kexec_core: Starting new kernel`)
)

// afterIO is the confirm's n-th disk I/O line (the test OS's iowatch
// step runs in v2 before confirm).
func afterIO(n int) []*regexp.Regexp {
	m := []*regexp.Regexp{confirmStart}
	for range n {
		m = append(m, ioLine)
	}
	return m
}

// cutPoints: in the apply, the META commit of applying (its line is logged
// before the write), the slot write (about 0.1 to 0.5 s after it here) and
// its read-back check (to about 1.7 s), with fixed delays, so where each
// lands varies from run to run: the matrix says what the cut left; the
// commit of trial (boot-once is already set), the kexec. In the
// confirm: v2's prestage counting its trial boot, then stager confirm,
// whose disk writes the test OS reports as they complete: about two for
// each META copy with a flush after each, the bless of b's entry (a rename
// on the ESP, five writes and a flush), loader.conf's default, the
// clearing of STAGE; and the power off after it. Two cuts that always
// left the same state as a neighbour (applying +0.15s, confirm I/O 2) were
// dropped to keep make test in its budget; the simulated machine's
// crash-state campaign covers every prefix of these writes.
var cutPoints = []cutPoint{
	{"applying +0", "apply", []*regexp.Regexp{toApplying}, 0, "", 0},
	{"applying +0.35s", "apply", []*regexp.Regexp{toApplying}, 350 * time.Millisecond, "", 0},
	{"applying +0.8s", "apply", []*regexp.Regexp{toApplying}, 800 * time.Millisecond, "", 0},
	{"trial +0", "apply", []*regexp.Regexp{toTrial}, 0, "", 0},
	{"kexec +0", "apply", []*regexp.Regexp{kexecInto}, 0, "", 0},
	{"trial boot 1 +0", "confirm", []*regexp.Regexp{trialCount}, 0, "", 0},
	{"confirm start +0", "confirm", []*regexp.Regexp{confirmStart}, 0, "", 0},
	{"confirm I/O 1", "confirm", afterIO(1), 0, "", 0},
	{"confirm I/O 3", "confirm", afterIO(3), 0, "", 0},
	{"confirmed +0", "confirm", []*regexp.Regexp{confirmedLine}, 0, "", 0},
	// Issue 16: the trial booted through the firmware (boot-once used up),
	// the power cut once confirm's META commit (two copies, a flush each)
	// is durable and before the ESP's new default: the firmware boots
	// slot a by its stale default, whose prestage must go on to b.
	{"confirm META via firmware", "confirm", []*regexp.Regexp{confirmStart}, 0, "stagehand.kexec=0", 2},
}

// maxRuns bounds the power-ons after a cut; settleTimeout bounds each.
const (
	maxRuns       = 3
	settleTimeout = 4 * time.Minute
)

// cutResult is one row of the matrix.
type cutResult struct {
	cut      cutPoint
	atCut    string // the state on disk right after the cut
	lastLine string // the last line of prestage or the test OS before it
	runs     int
	boots    string // firmware boots and kexecs over the runs
	ended    string
	stage    string // what is left in STAGE of the payload afterwards
	took     time.Duration
}

// The campaign is two top-level tests, the apply's cuts and the confirm's,
// so that make qemu-test can run them in two lanes at once; each keeps its
// own matrix. TestPowerCutsGRUB runs grubCutPoints on a grub-bios disk under
// SeaBIOS.
func TestPowerCutsApply(t *testing.T)   { powerCuts(t, "apply", "", cutPoints) }
func TestPowerCutsConfirm(t *testing.T) { powerCuts(t, "confirm", "", cutPoints) }
func TestPowerCutsGRUB(t *testing.T)    { powerCuts(t, "", bootdisk.GRUBBIOS, grubCutPoints) }

// grubCutPoints are the cuts around what GRUB adds, on a grub-bios disk:
// the slot write (kernel, initramfs, then slot.cfg), the trial armed in
// grubenv and counted down by prestage before the kexec, and a trial
// started by GRUB itself (stagehand.kexec=0), cut once confirm's META
// commit is durable and before grubenv's new default. Two more cuts in the
// confirm (after its first write, after its line) always left the state
// this last one leaves (META idle on b, grubenv's default a, b's last try
// armed) and were dropped to keep make test in its budget; the simulated
// machine cuts at every one of the confirm's writes on GRUB.
var grubCutPoints = []cutPoint{
	{"applying +0.35s", "apply", []*regexp.Regexp{toApplying}, 350 * time.Millisecond, "", 0},
	{"trial +0", "apply", []*regexp.Regexp{toTrial}, 0, "", 0},
	{"kexec +0", "apply", []*regexp.Regexp{kexecInto}, 0, "", 0},
	{"confirm META via GRUB", "confirm", []*regexp.Regexp{confirmStart}, 0, "stagehand.kexec=0", 2},
}

// powerCuts runs the cut points of points of one part of the upgrade
// (during; "" for all) on a disk with bootloader bl ("": systemd-boot),
// and keeps their matrix.
func powerCuts(t *testing.T, during, bl string, points []cutPoint) {
	checkHost(t)
	var rows []cutResult
	for _, c := range points {
		if during != "" && c.during != during {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			res := &cutResult{cut: c}
			defer func() {
				if t.Failed() {
					res.ended = "FAILED " + res.ended
				}
				rows = append(rows, *res)
			}()
			powerCut(t, res, bl)
		})
	}
	if len(rows) == 0 {
		t.Fatalf("no cut point during %q", during)
	}
	var b strings.Builder
	what := "during the " + during
	if bl != "" {
		what = "on a " + bl + " disk"
	}
	fmt.Fprintf(&b, "power-cut matrix, %s (%d cuts):\n", what, len(rows))
	fmt.Fprintf(&b, "%-20s %-8s %-100s %-5s %-20s %-10s %-16s %s\n", "cut", "during", "state at the cut", "runs", "boots after", "ended", "STAGE after", "time")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-20s %-8s %-100s %-5d %-20s %-10s %-16s %s\n", r.cut.name, r.cut.during, r.atCut, r.runs, r.boots, r.ended, r.stage, round(r.took))
	}
	t.Log(b.String())
	// go test shows the log of a passing test only with -v: the matrix
	// is also kept in a file.
	dir := os.Getenv("STAGEHAND_VM_LOGS")
	if dir == "" {
		dir = filepath.Join(repoRoot(), "build", "qemu-tests")
	}
	name := during
	if bl != "" {
		name = bl
	}
	out := filepath.Join(dir, "powercut-"+name+".txt")
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = os.WriteFile(out, []byte(b.String()), 0o644)
	}
	if err != nil {
		t.Errorf("keeping the matrix: %v", err)
	}
}

// powerCut runs one cut: boot until the marker, wait the delay, kill QEMU;
// then power on until the machine settles, and check where it ended.
func powerCut(t *testing.T, res *cutResult, bl string) {
	begin := time.Now()
	c := res.cut
	var u *upgrade
	started := firmwareBoot
	if bl == "" {
		u = newUpgrade(t, c.v1Params, "", "iowatch,confirm")
	} else {
		u = newGRUBUpgrade(t, bl, vm.SeaBIOS, c.v1Params, "", "iowatch,confirm")
		started = grubStart
	}
	payloadArts := status(t, u.img).Staged.Artifacts
	r := start(t, u.m)
	for _, m := range c.markers {
		expect(t, r, "the cut's marker", bootTimeout, m)
	}
	if c.flushes > 0 {
		want := flushesBefore(t, r.Console(), confirmStart) + c.flushes
		expect(t, r, fmt.Sprintf("the confirm's flush %d", c.flushes), stepTimeout,
			regexp.MustCompile(fmt.Sprintf(`stagehand-testos: io: vda writes=\d+ flushes=%d\r?\n`, want)))
	}
	time.Sleep(c.delay)
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	res.lastLine = lastFlowLine(r.Console())
	res.atCut = diskState(u.img)
	t.Logf("cut %s after %s; last line: %s", c.name, round(r.Elapsed()), res.lastLine)
	t.Logf("on disk at the cut: %s", res.atCut)

	var firmware, kexecs int
	var running meta.Slot
	var version, release string
	for res.runs < maxRuns {
		res.runs++
		r := start(t, u.m)
		what := fmt.Sprintf("run %d after the cut", res.runs)
		if _, err := r.Expect(context.Background(), settleTimeout, powerDownLine); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := r.Wait(poweroffTimeout); err != nil {
			t.Fatalf("%s: QEMU after power off: %v", what, err)
		}
		con := ansi.ReplaceAllString(r.Console(), "")
		firmware += len(started.FindAllString(con, -1))
		kexecs += len(kexecBoot.FindAllString(con, -1))
		for _, l := range stagerTrouble.FindAllString(con, -1) {
			t.Errorf("%s: %s", what, l)
		}
		all := testosLine.FindAllStringSubmatch(con, -1)
		if len(all) == 0 {
			t.Fatalf("%s: the test OS never ran", what)
		}
		last := all[len(all)-1]
		version, release, running = last[1], last[2], meta.Slot(last[3])
		st := status(t, u.img)
		sl := st.Slots
		t.Logf("%s: %d test OS boot(s), the last %s in slot %s; META %s, active %s, trial %s, a %s, b %s",
			what, len(all), version, running, sl.Phase, sl.Active, sl.Trial, sl.A.State, sl.B.State)
		switch {
		case sl.Phase == meta.PhaseIdle && sl.Active == running && stateOf(sl, running) == "good" && sl.Pending == running:
			continue // confirmed after a kexec: the next power-on, through the firmware, completes its blessing
		case sl.Phase == meta.PhaseIdle && sl.Active == running && stateOf(sl, running) == "good":
		case sl.Phase == meta.PhaseTrial && sl.Trial == running:
			continue // on trial still: power on again
		default:
			t.Errorf("%s: the test OS ran in slot %s, but META says phase %s, active %s (%s), trial %q:%s",
				what, running, sl.Phase, sl.Active, stateOf(sl, sl.Active), sl.Trial, lastReasons(st, 4))
			continue
		}
		break
	}
	res.boots = fmt.Sprintf("%d firmware, %d kexec", firmware, kexecs)
	res.took = time.Since(begin)

	st := status(t, u.img)
	sl := st.Slots
	wantVersion, wantKernel := "v1", u.k1
	if running == meta.SlotB {
		wantVersion, wantKernel = "v2", u.k2
	}
	res.ended = wantVersion + " on " + string(running)
	if version != wantVersion || release != wantKernel.Release {
		t.Errorf("slot %s ran version %s on %s, want %s on %s", running, version, release, wantVersion, wantKernel.Release)
	}
	if sl.Phase != meta.PhaseIdle || sl.Active != running || stateOf(sl, running) != "good" || st.Staged != nil || sl.Pending != "" {
		t.Errorf("after %d runs: not settled: running slot %s, META %+v, staged %+v%s", res.runs, running, sl, st.Staged, lastReasons(st, 6))
		res.ended += " (not settled)"
	}
	if d := damaged(u.img); d != "" {
		t.Errorf("META: %s", d)
	}
	def, ents := loaderOf(t, u.img)
	if def != running {
		t.Errorf("the bootloader's default is slot %s, the machine settled on %s", def, running)
	}
	if e, ok := ents[running]; !ok || e.Counting {
		t.Errorf("the active slot %s: entry %+v (present %v), want one that counts no tries", running, e, ok)
	}
	fsckESP(t, u.img)
	// META refers to no payload now; a cut while confirm zeroed it may
	// leave some of it (harmless: the next stage writes a header and
	// META before anything reads it).
	left := stageBytes(t, u.img, payloadArts)
	if n := len(left) - bytes.Count(left, []byte{0}); n == 0 {
		res.stage = "zero"
	} else {
		res.stage = fmt.Sprintf("%.1f MiB left", float64(n)/(1<<20))
	}
	t.Logf("settled: %s after %d run(s) (%s), STAGE %s; %s", res.ended, res.runs, res.boots, res.stage, lastReasons(st, 3))
}

// ioFlushes matches the test OS's disk counters.
var ioFlushes = regexp.MustCompile(`stagehand-testos: io: vda writes=\d+ flushes=(\d+)`)

// flushesBefore is the disk's flush count the test OS last reported before
// the first line matching mark.
func flushesBefore(t testing.TB, con string, mark *regexp.Regexp) int {
	t.Helper()
	loc := mark.FindStringIndex(con)
	if loc == nil {
		t.Fatalf("no %q on the console", mark)
	}
	all := ioFlushes.FindAllStringSubmatch(con[:loc[0]], -1)
	if len(all) == 0 {
		t.Fatalf("the test OS reported no disk counters before %q", mark)
	}
	n, err := strconv.Atoi(all[len(all)-1][1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// stateOf is the state of slot s in sl.
func stateOf(sl *meta.Slots, s meta.Slot) string {
	switch s {
	case meta.SlotA:
		return sl.A.State
	case meta.SlotB:
		return sl.B.State
	}
	return ""
}

// lastFlowLine is the last line of prestage or of the test OS in con.
func lastFlowLine(con string) string {
	con = ansi.ReplaceAllString(con, "")
	lines := strings.Split(con, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "stagehand: ") || strings.Contains(lines[i], "stagehand-testos: ") || strings.Contains(lines[i], "kexec_core") {
			l := lines[i]
			if j := strings.Index(l, "stagehand"); j >= 0 {
				l = l[j:]
			}
			if len(l) > 110 {
				l = l[:110] + "…"
			}
			return l
		}
	}
	return "(none)"
}

// diskState describes META, the loader entries and the ESP of img as a cut
// left them, read-only; it never fails (a cut may leave anything).
func diskState(img string) string {
	var parts []string
	s, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		return "META: " + err.Error()
	}
	sl, err := s.Block().Slots()
	if err != nil {
		parts = append(parts, "META: "+err.Error())
	} else {
		m := fmt.Sprintf("META %s", sl.Phase)
		if sl.Trial != "" {
			m += fmt.Sprintf(" b×%d", sl.TriesLeft)
		}
		m += " active " + string(sl.Active)
		parts = append(parts, m)
	}
	if dm := s.Damaged(); dm != "" {
		parts = append(parts, "torn: "+dm)
	}
	r, err := d.Find(disk.LabelESP)
	if err == nil {
		var esp *fat.Volume
		if esp, err = fat.Open(r, r.Size); err == nil {
			l := bootloader.Find(esp, bootloader.Options{Cmdline: new(string)})
			var ents []boot.SlotEntry
			if ents, err = l.Slots(context.Background()); err == nil {
				parts = append(parts, entryStates(ents))
			}
			staged, _, _ := s.Block().Staged()
			parts = append(parts, slotFiles(esp, meta.SlotB, staged))
			if def, derr := l.Default(context.Background()); derr == nil {
				parts = append(parts, "default "+string(def))
			}
		}
	}
	if err != nil {
		parts = append(parts, "ESP: "+err.Error())
	}
	if err == nil {
		parts = append(parts, "fsck "+fsckVerdict(r))
	}
	d.Close()
	return strings.Join(parts, "; ")
}

// slotFiles lists the files of slot's directory on esp with their sizes
// in MiB and whether their bytes are the staged payload's (what a cut in
// the slot write left).
func slotFiles(esp *fat.Volume, slot meta.Slot, staged *meta.Staged) string {
	dir := "stagehand/" + string(slot)
	names, err := esp.ReadDir(dir)
	if err != nil || len(names) == 0 {
		return dir + "/ none"
	}
	want := map[string]string{}
	if staged != nil {
		// systemd-boot's names, then GRUB's initrd.
		for name, art := range map[string]string{"vmlinuz": payload.Kernel, "initramfs": payload.Initramfs, "initrd": payload.Initramfs} {
			if a, ok := payload.Find(staged.Artifacts, art); ok {
				want[name] = a.SHA256
			}
		}
	}
	var l []string
	for _, n := range names {
		f, err := esp.Open(dir + "/" + n)
		if err != nil {
			l = append(l, n+" ?")
			continue
		}
		h := sha256.New()
		size, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			l = append(l, n+" ?")
			continue
		}
		verdict := "" // nothing staged to compare with
		if sum, ok := want[n]; ok && hex.EncodeToString(h.Sum(nil)) == sum {
			verdict = " whole"
		} else if ok {
			verdict = " partial"
		}
		l = append(l, fmt.Sprintf("%s %.1fM%s", n, float64(size)/(1<<20), verdict))
	}
	return dir + "/ " + strings.Join(l, ", ")
}

// entryStates sums up the slots' entries: "a,b+1-1": each slot, with the
// tries left and done when the bootloader counts them.
func entryStates(ents []boot.SlotEntry) string {
	var out []string
	for _, e := range ents {
		s := string(e.Slot)
		if e.Counting {
			s += fmt.Sprintf("+%d-%d", e.Left, e.Done)
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

// loaderOf reads img's bootloader, whichever it is: its default slot and
// the slots' entries.
func loaderOf(t testing.TB, img string) (meta.Slot, map[meta.Slot]boot.SlotEntry) {
	t.Helper()
	var def meta.Slot
	ents := map[meta.Slot]boot.SlotEntry{}
	withPartition(t, img, disk.LabelESP, false, func(r *disk.Region) {
		esp, err := fat.Open(r, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		l := bootloader.Find(esp, bootloader.Options{Cmdline: new(string)})
		if def, err = l.Default(context.Background()); err != nil {
			t.Fatal(err)
		}
		all, err := l.Slots(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range all {
			ents[e.Slot] = e
		}
	})
	return def, ents
}

// fsckVerdict runs fsck.fat -n on a copy of the ESP and sums it up.
func fsckVerdict(r *disk.Region) string {
	f, err := os.CreateTemp("", "esp-*.img")
	if err != nil {
		return err.Error()
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, io.NewSectionReader(r, 0, r.Size))
	f.Close()
	if err != nil {
		return err.Error()
	}
	out, err := exec.Command("fsck.fat", "-n", f.Name()).CombinedOutput()
	if err == nil && strings.Count(strings.TrimSpace(string(out)), "\n") == 1 {
		return "clean"
	}
	return "dirty"
}

// damaged says which META copies of img are invalid.
func damaged(img string) string {
	s, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		return err.Error()
	}
	d.Close()
	return s.Damaged()
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
