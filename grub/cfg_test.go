package grub

import (
	"bufio"
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.cfg from Render")

var renderCases = []struct {
	name   string
	config Config
}{
	{"default", config()},
	{"bios", Config{
		Env: "/boot/grub/grubenv",
		A:   Slot{Kernel: "/a/vmlinuz-6.1.0-56-cloud-amd64", Initramfs: "/a/initrd.img", Cfg: "/a/slot.cfg"},
		B:   Slot{Kernel: "/b/vmlinuz-6.1.0-57-cloud-amd64", Initramfs: "/b/initrd.img", Cfg: "/b/slot.cfg"},
	}},
}

func TestGolden(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.config)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tc.name+".cfg")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./grub -update to write it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("Render differs from %s (-want, +got); if the change is meant, run go test ./grub -update:\n%s", golden, diff)
			}
		})
	}
}

func TestGrubScriptCheck(t *testing.T) {
	bin := grubtest.LookTool(t, "grub-script-check", "grub-common")
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Render(tc.config)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "grub.cfg")
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(bin, file).CombinedOutput(); err != nil {
				t.Fatalf("grub-script-check: %v\n%s", err, out)
			}
		})
	}
	// The check does catch a broken script.
	file := filepath.Join(t.TempDir(), "broken.cfg")
	if err := os.WriteFile(file, []byte("if true; then\n\techo x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(bin, file).Run(); err == nil {
		t.Error("grub-script-check accepted an if without fi")
	}
}

// platforms are the directories in grubtest.Lib of the GRUB platforms the
// script runs on: grub-pc-bin's and grub-efi-amd64-bin's.
var platforms = []string{"i386-pc", "x86_64-efi"}

// builtins are what no module in command.lst provides: kernel.img's
// commands (grub-core/kern/corecmd.c), the normal module's script commands
// (grub-core/script/main.c: return), the script's keywords and its own
// function.
var builtins = []string{"set", "unset", "insmod", "return", "if", "then", "elif", "else", "fi", "function", "}", "stagehand_choose"}

// commandModules reads a platform's command.lst: command -> module.
func commandModules(t *testing.T, platform string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(grubtest.Lib, platform, "command.lst"))
	if err != nil {
		t.Fatalf("%v: install Debian's grub-pc-bin and grub-efi-amd64-bin (run make deps)", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		cmd, mod, ok := strings.Cut(line, ": ")
		if ok {
			m[strings.TrimPrefix(cmd, "*")] = mod
		}
	}
	return m
}

// commands returns the command words of a script in the shape Render
// writes: one statement a line, blocks opened by if/elif/then and
// menuentry ... {. Quoted words are kept whole.
func commands(t *testing.T, script []byte) []string {
	t.Helper()
	var cmds []string
	sc := bufio.NewScanner(bytes.NewReader(script))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.ContainsAny(line, ";&|") && !strings.HasSuffix(line, "; then") {
			if i := strings.IndexAny(line, ";&|"); !inQuotes(line, i) {
				t.Fatalf("line %d: %q: more than one statement on a line; teach commands to split it", n, line)
			}
		}
		line = strings.TrimSuffix(line, "; then")
		w := strings.Fields(line)[0]
		if w == "if" || w == "elif" {
			w = strings.Fields(line)[1]
		}
		cmds = append(cmds, w)
	}
	return cmds
}

// inQuotes says whether byte i of line is inside quotes.
func inQuotes(line string, i int) bool {
	var q byte
	for j := 0; j < i; j++ {
		switch {
		case q == 0 && (line[j] == '\'' || line[j] == '"'):
			q = line[j]
		case q != 0 && line[j] == q:
			q = 0
		}
	}
	return q != 0
}

func TestStockModules(t *testing.T) {
	b, err := Render(renderCases[0].config)
	if err != nil {
		t.Fatal(err)
	}
	cmds := commands(t, b)
	for _, want := range []string{"load_env", "save_env", "[", "linux", "initrd", "menuentry", "serial", "terminal_output", "echo", "source", "probe", "unset"} {
		if !slices.Contains(cmds, want) {
			t.Fatalf("commands found no %q in the script: %q", want, cmds)
		}
	}
	for _, platform := range platforms {
		lst := commandModules(t, platform)
		for _, m := range append(slices.Clone(Modules), "normal") {
			if _, err := os.Stat(filepath.Join(grubtest.Lib, platform, m+".mod")); err != nil {
				t.Errorf("%s: module %s: %v", platform, m, err)
			}
		}
		for _, c := range cmds {
			if slices.Contains(builtins, c) {
				continue
			}
			mod, ok := lst[c]
			if !ok {
				t.Errorf("%s: command %q is in no stock module (%s/%s/command.lst)", platform, c, grubtest.Lib, platform)
				continue
			}
			if mod != "normal" && !slices.Contains(Modules, mod) {
				t.Errorf("%s: command %q is in module %s, which the script does not insmod", platform, c, mod)
			}
		}
	}
	// regexp would expand wildcards in the words of every command, the
	// command line's among them.
	for _, absent := range []string{"gptprio", "increment", "decrement", "blscfg", "regexp"} {
		if slices.Contains(cmds, absent) || slices.Contains(Modules, absent) {
			t.Errorf("the script uses %s", absent)
		}
	}
}

func TestRenderRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"relative env", func(c *Config) { c.Env = "grub/grubenv" }},
		{"empty kernel", func(c *Config) { c.A.Kernel = "" }},
		{"blank in initramfs", func(c *Config) { c.B.Initramfs = "/b/init ramfs" }},
		{"quote in path", func(c *Config) { c.B.Kernel = "/b/vm'linuz" }},
		{"double quote in slot.cfg", func(c *Config) { c.A.Cfg = `/a/"slot.cfg` }},
		{"relative slot.cfg", func(c *Config) { c.B.Cfg = "b/slot.cfg" }},
		{"no slot.cfg", func(c *Config) { c.B.Cfg = "" }},
		{"backslash", func(c *Config) { c.B.Initramfs = `/b\initrd` }},
		{"control character", func(c *Config) { c.A.Kernel = "/a/\x01" }},
		{"non-ASCII", func(c *Config) { c.A.Kernel = "/a/é" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config()
			tc.edit(&c)
			if b, err := Render(c); err == nil {
				t.Errorf("Render succeeded:\n%s", b)
			}
		})
	}
}

func TestParams(t *testing.T) {
	if SlotParam != boot.SlotParam {
		t.Errorf("SlotParam = %q, boot.SlotParam = %q", SlotParam, boot.SlotParam)
	}
	if PartUUIDParam != disk.PartUUIDParam {
		t.Errorf("PartUUIDParam = %q, disk.PartUUIDParam = %q", PartUUIDParam, disk.PartUUIDParam)
	}
}

// TestCountdown checks the countdown ladder: every count 1..MaxTries goes
// one down, nothing else is counted, and counts keep one digit.
func TestCountdown(t *testing.T) {
	b, err := Render(renderCases[0].config)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for n := 1; n <= MaxTries; n++ {
		want := "[ \"x$stagehand_tries\" = x" + string(rune('0'+n)) + " ]; then\n\t\tset stagehand_next=" + string(rune('0'+n-1)) + "\n"
		if strings.Count(s, want) != 1 {
			t.Errorf("no single step %d -> %d in the script", n, n-1)
		}
	}
	if got := strings.Count(s, "set stagehand_next=") - 1; got != MaxTries {
		t.Errorf("%d counting steps, want %d", got, MaxTries)
	}
	if got := strings.Count(s, "save_env"); got != 1 {
		t.Errorf("save_env %d times, want once", got)
	}
	saved := "\tset stagehand_tries=\"$stagehand_next\"\n" +
		"\tif save_env -f '/grub/grubenv' stagehand_tries; then\n" +
		"\t\tset stagehand_tries=\n" +
		"\t\tload_env -f '/grub/grubenv' stagehand_tries\n" +
		"\t\tif [ \"x$stagehand_tries\" = \"x$stagehand_next\" ]; then\n" +
		"\t\t\tset stagehand_mode=trial\n"
	if !strings.Contains(s, saved) || strings.Count(s, "set stagehand_mode=trial") != 1 {
		t.Error("the trial is not booted only after save_env succeeded and grubenv read back holds the new count")
	}
}
