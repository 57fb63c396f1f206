package grub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub/grubenv"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestEmu runs the rendered grub.cfg under Debian's grub-emu (package
// grub-emu, GRUB 2.06's emulator), against a GPT disk image whose ESP is
// written with the project's own FAT code, and checks what the script chose
// and what grubenv holds afterwards. grub-emu's x86_64-emu build has no
// linux and no serial command; the harness (emuHarness) puts functions in
// their place: serial fails (no serial port), and linux prints its
// arguments, one a line, and halts grub-emu: the entry GRUB booted, with the
// stagehand.grub=MODE:WANT:RAN it would pass, is the first linux called.
func TestEmu(t *testing.T) {
	e := newEmu(t)
	cfg := config()
	script, err := Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The slots' slot.cfg, whose command lines the entries pass: words
	// GRUB's script would expand or split on, were they not in quotes,
	// then in a variable. Not a word a glob would match: grub-emu has
	// every module built in, regexp among them, which expands wildcards in
	// the words of a command ("/stagehand/*" would be /stagehand/a and
	// /stagehand/b here); the stock GRUB the script runs on loads no
	// regexp (TestStockModules, and install.ImageModules), and passes such
	// a word as it is.
	slotCfgs := map[meta.Slot]slotCfg{
		"a": {Version: "v1", Tries: 1, Cmdline: "console=ttyS0"},
		"b": {Version: "v2 ünïcode", Tries: 3, Cmdline: "console=ttyS0,115200n8 quiet $notavariable ${x} {braces};semicolon a|b&c x=*.efi [y] #z"},
	}
	// args are what the entry of the last slot in choice's RAN passes to
	// linux; partuuid is the ESP's partition GUID, "" for none.
	args := func(choice, partuuid string) []string {
		slot := meta.Slot(choice[len(choice)-1:])
		s := cfg.A
		if slot == "b" {
			s = cfg.B
		}
		a := append([]string{s.Kernel}, strings.Fields(slotCfgs[slot].Cmdline)...)
		a = append(a, SlotParam+"="+string(slot), ChoiceParam+"="+choice)
		if partuuid != "" {
			a = append(a, PartUUIDParam+"="+partuuid)
		}
		return a
	}
	type run struct {
		choice string // MODE:WANT:RAN, the stagehand.grub the script passes
		tries  string // stagehand_tries in grubenv afterwards, if not ""
		say    string // a line the script prints, if not ""
	}
	torn := func(slot meta.Slot, cut func(b []byte) []byte) func(map[string][]byte) {
		return func(files map[string][]byte) {
			name := "/" + slotFile(slot, cfgFile)
			files[name] = cut(files[name])
		}
	}
	for _, tc := range []struct {
		name string
		env  map[string]string // nil: no grubenv
		// nosave: grubenv lies on a FAT that GRUB reads through
		// loopback, which it cannot write; the script runs from a device
		// that is no partition, and passes no partition GUID.
		nosave bool
		// hidden: keep the script's timeout_style=hidden (see emuHarness).
		hidden bool
		// edit changes the files put on the ESP, by path.
		edit func(files map[string][]byte)
		runs []run // one grub-emu run each, on the same disk
	}{
		{name: "good b", env: map[string]string{VarSlot: "b"}, runs: []run{
			{choice: "good:b:b"},
		}},
		{name: "good b hidden timeout", env: map[string]string{VarSlot: "b"}, hidden: true, runs: []run{
			{choice: "good:b:b"},
		}},
		{name: "trial b 2 tries", env: map[string]string{VarSlot: "a", VarTrial: "b", VarTries: "2"}, runs: []run{
			{choice: "trial:b:b", tries: "1"},
			{choice: "trial:b:b", tries: "0"},
			{choice: "good:a:a"},
			{choice: "good:a:a"},
		}},
		{name: "trial a from good b", env: map[string]string{VarSlot: "b", VarTrial: "a", VarTries: "1"}, runs: []run{
			{choice: "trial:a:a", tries: "0"},
			{choice: "good:b:b"},
		}},
		{name: "invalid tries", env: map[string]string{VarSlot: "a", VarTrial: "b", VarTries: "x"}, runs: []run{
			{choice: "good:a:a"},
		}},
		{name: "no grubenv", runs: []run{
			{choice: "noslot:a:a"},
		}},
		{name: "unwritable grubenv", env: map[string]string{VarSlot: "a", VarTrial: "b", VarTries: "2"}, nosave: true, runs: []run{
			{choice: "nosave:a:a", say: "stagehand: cannot save stagehand_tries=1 in /grub/grubenv so the trial of slot"},
		}},
		// A slot.cfg cut short while it was written (its slot neither the
		// default nor on trial then, but the default here): the entry
		// fails, and GRUB falls back to the other slot.
		{name: "slot.cfg without its last line", env: map[string]string{VarSlot: "b"},
			edit: torn("b", func(b []byte) []byte {
				return b[:bytes.LastIndex(b[:len(b)-1], []byte("\n"))+1]
			}),
			runs: []run{{choice: "good:b:ba", say: "stagehand: slot b: /stagehand/b/slot.cfg is missing or incomplete"}}},
		{name: "slot.cfg cut in a quote", env: map[string]string{VarSlot: "b"},
			edit: torn("b", func(b []byte) []byte { return b[:bytes.Index(b, []byte("quiet"))] }),
			runs: []run{{choice: "good:b:ba", say: "is missing or incomplete"}}},
		{name: "slot.cfg empty", env: map[string]string{VarSlot: "a"},
			edit: torn("a", func([]byte) []byte { return nil }),
			runs: []run{{choice: "good:a:ab", say: "stagehand: slot a: /stagehand/a/slot.cfg is missing or incomplete"}}},
		{name: "no slot.cfg", env: map[string]string{VarSlot: "a"},
			edit: func(files map[string][]byte) { delete(files, "/"+slotFile("a", cfgFile)) },
			runs: []run{{choice: "good:a:ab", say: "is missing or incomplete"}}},
		{name: "the other slot's slot.cfg", env: map[string]string{VarSlot: "a"},
			edit: func(files map[string][]byte) { files["/"+slotFile("a", cfgFile)] = files["/"+slotFile("b", cfgFile)] },
			runs: []run{{choice: "good:a:ab", say: "is missing or incomplete"}}},
		// Slot a's variables are not slot b's: a fallback from a whole
		// slot.cfg to a torn one does not boot.
		{name: "fallback to a torn slot.cfg", env: map[string]string{VarSlot: "a"},
			edit: func(files map[string][]byte) {
				delete(files, "/"+slotFile("a", kernelFile))
				torn("b", func(b []byte) []byte { return b[:len(b)-4] })(files)
			},
			runs: []run{{choice: "", say: "stagehand: slot b: /stagehand/b/slot.cfg is missing or incomplete"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vars := maps.Clone(tc.env)
			env := emuEnv(t, vars)
			files := map[string][]byte{CfgPath: script}
			for _, slot := range []meta.Slot{"a", "b"} {
				b, err := slotCfgs[slot].marshal(slot)
				if err != nil {
					t.Fatal(err)
				}
				files["/"+slotFile(slot, cfgFile)] = b
				files["/"+slotFile(slot, kernelFile)] = []byte("kernel " + string(slot))
				files["/"+slotFile(slot, initrdFile)] = []byte("initramfs " + string(slot))
			}
			if tc.edit != nil {
				tc.edit(files)
			}
			img, espGUID := newEmuDisk(t, files, env, tc.nosave)
			partuuid := strings.ToLower(espGUID)
			if tc.nosave {
				partuuid = ""
			}
			// What the script says of the device it runs from.
			probed := "stagehand: partition GUID of hd0,gpt1: " + partuuid + "\n"
			if tc.nosave {
				probed = "stagehand: partition GUID of emuloop: none\n"
			}
			for i, r := range tc.runs {
				got := e.run(t, img, tc.nosave, tc.hidden)
				if !strings.Contains(got.out, probed) {
					t.Errorf("run %d: grub-emu did not print %q:\n%s", i+1, probed, got.out)
				}
				if !strings.Contains(got.out, r.say) {
					t.Errorf("run %d: grub-emu did not print %q:\n%s", i+1, r.say, got.out)
				}
				if r.choice == "" {
					if got.args != nil {
						t.Fatalf("run %d: linux ran with %q, want no entry booted; grub-emu printed:\n%s", i+1, got.args, got.out)
					}
					continue
				}
				mode, rest, _ := strings.Cut(r.choice, ":")
				want, _, _ := strings.Cut(rest, ":")
				if got.want != want || got.mode != mode {
					t.Fatalf("run %d: the script chose slot %s (%s), want %s (%s); grub-emu printed:\n%s", i+1, got.want, got.mode, want, mode, got.out)
				}
				if diff := cmp.Diff(args(r.choice, partuuid), got.args); diff != "" {
					t.Fatalf("run %d: linux's arguments differ (-want, +got):\n%s\ngrub-emu printed:\n%s", i+1, diff, got.out)
				}
				// GRUB changes nothing but the count, in place.
				if r.tries != "" {
					vars[VarTries] = r.tries
				}
				after, err := readEmuEnv(t, img, cfg.Env, tc.nosave)
				switch {
				case env == nil && !errors.Is(err, fs.ErrNotExist):
					t.Fatalf("run %d: grubenv after: %v, want none", i+1, err)
				case env == nil:
				case err != nil:
					t.Fatalf("run %d: %v", i+1, err)
				default:
					if diff := cmp.Diff(string(emuEnv(t, vars)), string(after)); diff != "" {
						t.Errorf("run %d: grubenv after (-want, +got):\n%s", i+1, diff)
					}
				}
			}
		})
	}
}

// emuEnv is a grubenv block with vars in its first sector, as stagehand
// writes them; nil if vars is.
func emuEnv(t *testing.T, vars map[string]string) []byte {
	t.Helper()
	if vars == nil {
		return nil
	}
	var g grubenv.Env
	for _, k := range []string{VarSlot, VarTrial, VarTries} {
		if v, ok := vars[k]; ok {
			if err := g.SetFirst(k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := g.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// emu is how the test runs grub-emu: util-linux's script, which gives
// grub-emu's console the terminal it needs, and grub-emu.
type emu struct{ script, grubEmu string }

// emuTimeout bounds one grub-emu run, which takes about 0.05 s (3 s with
// timeout_style=hidden); the bound is ten times that, for a loaded machine.
const emuTimeout = 30 * time.Second

func newEmu(t *testing.T) *emu {
	t.Helper()
	e := &emu{
		script:  grubtest.LookTool(t, "script", "bsdutils"),
		grubEmu: grubtest.LookTool(t, "grub-emu", "grub-emu"),
	}
	if _, err := os.Stat(filepath.Join(grubtest.Lib, emuPlatform, "normal.mod")); err != nil {
		t.Fatalf("%v: grub-emu's modules are missing (Debian package grub-emu): run make deps", err)
	}
	return e
}

// emuHarness is the grub.cfg grub-emu runs: it stands in for the commands
// grub-emu lacks, sets $root as the core image's prefix would (the ESP, or
// for nosave a FAT read through loopback, which GRUB cannot write), and
// sources the stagehand grub.cfg. Normal mode then boots its default entry,
// or its fallback, or last the harness's own entry, which halts.
//
// Unless hidden, it then sets timeout_style=menu: with hidden, grub-emu
// polls its console for 3 s before it boots (the choice is the same; the
// "good b hidden timeout" case shows it).
func emuHarness(nosave, hidden bool) string {
	var b strings.Builder
	b.WriteString(`# package grub's TestEmu
function serial {
	return 1
}
function linux {
	echo "emu: linux"
	for a in "$@"; do
		echo "emu: arg $a"
	done
	echo "emu: end"
	halt
}
`)
	if nosave {
		b.WriteString("loopback emuloop (hd0,gpt1)/" + emuNoSave + "\nset root=(emuloop)\n")
	} else {
		b.WriteString("set root=(hd0,gpt1)\n")
	}
	b.WriteString("source /grub/grub.cfg\n")
	// The last fallback, after the script's: an entry that says no other
	// booted.
	b.WriteString(`menuentry 'emu: none booted' {
	echo "emu: none booted"
	halt
}
set fallback="$fallback 2"
`)
	if !hidden {
		b.WriteString("set timeout_style=menu\n")
	}
	return b.String()
}

// emuNoSave is the FAT image file, on the ESP, that holds grubenv for
// nosave.
const emuNoSave = "nosave.img"

// emuPlatform is grub-emu's directory in grubtest.Lib.
const emuPlatform = "x86_64-emu"

type emuRun struct {
	want, mode string   // from the script's echo "stagehand: slot WANT (MODE): ..."
	args       []string // the arguments of the first linux command; nil if none ran
	out        string   // what grub-emu printed, without escape sequences
}

var (
	emuChoice  = regexp.MustCompile(`stagehand: slot ([^ ]*) \(([^)]*)\)`)
	emuArgLine = regexp.MustCompile(`^emu: arg (.*)$`)
)

// run boots img's grub.cfg once under grub-emu and returns what it chose.
// grub-emu's console needs a terminal: script gives it a pty.
func (e *emu) run(t *testing.T, img string, nosave, hidden bool) emuRun {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "grub.cfg")
	if err := os.WriteFile(cfg, []byte(emuHarness(nosave, hidden)), 0o644); err != nil {
		t.Fatal(err)
	}
	// dir is grub-emu's $prefix: it reads $prefix/grub.cfg, and insmod
	// looks in $prefix/x86_64-emu (grub-emu has its modules built in).
	if err := os.Symlink(filepath.Join(grubtest.Lib, emuPlatform), filepath.Join(dir, emuPlatform)); err != nil {
		t.Fatal(err)
	}
	devmap := filepath.Join(dir, "device.map")
	if err := os.WriteFile(devmap, []byte("(hd0) "+img+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), emuTimeout)
	defer cancel()
	cmdline := shellQuote(e.grubEmu) + " -d " + shellQuote(dir) + " -m " + shellQuote(devmap)
	cmd := exec.CommandContext(ctx, e.script, "-q", "-e", "-c", cmdline, "/dev/null")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TERM=vt100", "SHELL=/bin/sh")
	// Stdin a pipe nobody writes to: no key, and no end of input.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	cmd.Stdin = r
	// script runs grub-emu in a session of its own: SIGTERM lets script
	// end it (SIGKILL would leave it to the pty's hangup).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	raw, err := cmd.Output()
	out := grubtest.Console(string(raw))
	if ctx.Err() != nil {
		t.Fatalf("grub-emu did not halt within %v; it printed:\n%s", emuTimeout, out)
	}
	if err != nil {
		t.Fatalf("script -c grub-emu: %v; it printed:\n%s", err, out)
	}
	t.Logf("grub-emu ran %v", time.Since(start).Round(time.Millisecond))
	var got emuRun
	got.out = out
	if m := emuChoice.FindAllStringSubmatch(out, -1); len(m) == 1 {
		got.want, got.mode = m[0][1], m[0][2]
	} else {
		t.Fatalf("grub-emu printed %d lines of the script's choice, want 1:\n%s", len(m), out)
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if l == "emu: none booted" {
			return got // args nil
		}
		// After what GRUB printed as it read slot.cfg, on the same line.
		if !strings.HasSuffix(l, "emu: linux") {
			continue
		}
		for _, l := range lines[i+1:] {
			if l == "emu: end" {
				return got
			}
			m := emuArgLine.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("grub-emu printed %q among linux's arguments:\n%s", l, out)
			}
			got.args = append(got.args, m[1])
		}
	}
	t.Fatalf("grub-emu called no linux, or halted before its last argument:\n%s", out)
	return got
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// newEmuDisk writes a disk image with the project's layout (disk.Create)
// and an ESP (fat.Format) holding files (by path from its root) and
// grubenv unless env is nil, and returns it with the ESP's partition GUID.
// For nosave, the files and grubenv are in a FAT image file on the ESP
// instead, where the harness sets $root.
func newEmuDisk(t *testing.T, files map[string][]byte, env []byte, nosave bool) (img, espGUID string) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	l := disk.Layout{ESPSize: disk.MinESPSize, StageSize: 1 << 20}
	l.Size = l.MinSize()
	d, err := disk.Create(context.Background(), img, l)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := fat.Format(r, r.Size, boot.ESPLabel)
	if err != nil {
		t.Fatal(err)
	}
	fill := func(vol *fat.Volume, env []byte) {
		t.Helper()
		for name, b := range files {
			if err := vol.WriteFile(strings.TrimPrefix(name, "/"), bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
		}
		if env != nil {
			if err := vol.WriteFile(EnvPath, bytes.NewReader(env)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !nosave {
		fill(esp, env)
	} else {
		fill(esp, nil)
		inner := filepath.Join(t.TempDir(), emuNoSave)
		vol := grubtest.FormatFAT(t, inner, grubtest.FATSize)
		fill(vol, env)
		if err := vol.Sync(); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(inner)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := esp.WriteFile(emuNoSave, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return img, r.GUID
}

// readEmuEnv reads grubenv back from img's ESP (for nosave, from the FAT
// image on it) with the project's FAT code, opening the image afresh.
func readEmuEnv(t *testing.T, img, name string, nosave bool) ([]byte, error) {
	t.Helper()
	if !nosave {
		return grubtest.ReadESP(t, img, name)
	}
	b, err := grubtest.ReadESP(t, img, emuNoSave)
	if err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(t.TempDir(), emuNoSave)
	if err := os.WriteFile(inner, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(inner)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vol, err := fat.Open(readOnly{f}, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return vol.ReadFile(strings.TrimPrefix(name, "/"))
}

// readOnly is a file as a fat.Device that refuses writes.
type readOnly struct{ *os.File }

func (readOnly) WriteAt([]byte, int64) (int, error) { return 0, fmt.Errorf("read-only") }
func (readOnly) Sync() error                        { return nil }
