package grub

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
)

// The grubenv variables the script reads (all three) and writes (VarTries
// only). stagehand keeps them in the first sector of grubenv
// (grubenv.Env.SetFirst), each a fixed length: a slot letter, one digit.
const (
	VarSlot  = "stagehand_slot"  // the good slot: a or b
	VarTrial = "stagehand_trial" // the slot on trial: a or b, or anything else for none
	VarTries = "stagehand_tries" // the trial's firmware boots left: 0 to MaxTries
)

// MaxTries is the most tries a trial can be given: the count is one digit,
// so that GRUB's save_env rewrites it in place.
const MaxTries = 9

// Kernel parameters the script puts on the command line of the slot it
// boots. SlotParam is the same as boot.SlotParam.
const (
	SlotParam = "stagehand.slot"
	// ChoiceParam is MODE:WANT:RAN (see the package documentation).
	ChoiceParam = "stagehand.grub"
)

// Modes of ChoiceParam: why the script wanted the slot it wanted.
const (
	ModeTrial  = "trial"  // a trial's try, counted down and saved
	ModeGood   = "good"   // the good slot, no trial due (none, or its tries used up)
	ModeNoSave = "nosave" // a trial was due but save_env failed: the good slot instead
	ModeNoSlot = "noslot" // stagehand_slot missing or invalid: slot a
)

// Slot is what the script boots for one slot.
type Slot struct {
	// Kernel and Initramfs are paths on the boot file system (the device
	// GRUB's $root names when the script runs), from its root:
	// "/stagehand/a/vmlinuz".
	Kernel, Initramfs string
	// Cmdline is the kernel command line without SlotParam and
	// ChoiceParam, which the script adds.
	Cmdline string
}

// Config is what the script is rendered from.
type Config struct {
	// Env is the path of the grubenv file on the boot file system, from
	// its root, next to grub.cfg: "/grub/grubenv".
	Env  string
	A, B Slot
}

// Render returns the grub.cfg for c. It refuses paths and command lines
// that GRUB would not pass on byte for byte: quotes, backslashes, control
// and non-ASCII characters, and command lines that set SlotParam or
// ChoiceParam themselves.
func Render(c Config) ([]byte, error) {
	if err := checkPath("grubenv", c.Env); err != nil {
		return nil, err
	}
	data := struct {
		Env, Choice string
		Slots       []slotData
	}{
		Env:    quote(c.Env),
		Choice: ChoiceParam + "=${stagehand_mode}:${stagehand_want}:${stagehand_ran}",
	}
	for i, s := range []Slot{c.A, c.B} {
		name := string(rune('a' + i))
		if err := checkPath("slot "+name+" kernel", s.Kernel); err != nil {
			return nil, err
		}
		if err := checkPath("slot "+name+" initramfs", s.Initramfs); err != nil {
			return nil, err
		}
		words, err := cmdlineWords(name, s.Cmdline)
		if err != nil {
			return nil, err
		}
		words = append(words, quote(SlotParam+"="+name))
		data.Slots = append(data.Slots, slotData{
			Name:      name,
			Kernel:    quote(s.Kernel),
			Initramfs: quote(s.Initramfs),
			Cmdline:   strings.Join(words, " "),
		})
	}
	var b bytes.Buffer
	if err := cfgTemplate.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("rendering grub.cfg: %w", err)
	}
	return b.Bytes(), nil
}

type slotData struct {
	Name              string
	Kernel, Initramfs string // quoted for GRUB
	Cmdline           string // GRUB words, each quoted
}

// quote makes s one literal GRUB word. checkPath and cmdlineWords have
// made sure it holds no single quote.
func quote(s string) string { return "'" + s + "'" }

// safe reports whether GRUB passes s on unchanged inside single quotes,
// and its linux command passes it to the kernel unchanged (GRUB escapes
// quotes and backslashes with a backslash, which the kernel keeps).
func safe(s string) error {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f:
			return fmt.Errorf("byte %#02x at %d is a control or non-ASCII character", c, i)
		case c == '\'' || c == '"' || c == '\\':
			return fmt.Errorf("%q at %d: GRUB's linux command would pass it on escaped", c, i)
		}
	}
	return nil
}

func checkPath(what, p string) error {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, " \t") {
		return fmt.Errorf("grub.cfg: %s path %q is not absolute or holds blanks", what, p)
	}
	if err := safe(p); err != nil {
		return fmt.Errorf("grub.cfg: %s path %q: %w", what, p, err)
	}
	return nil
}

// cmdlineWords splits a slot's command line into quoted GRUB words.
func cmdlineWords(slot, cmdline string) ([]string, error) {
	var words []string
	for _, w := range strings.Fields(cmdline) {
		if err := safe(w); err != nil {
			return nil, fmt.Errorf("grub.cfg: slot %s command line word %q: %w", slot, w, err)
		}
		k, _, _ := strings.Cut(w, "=")
		if k == SlotParam || k == ChoiceParam {
			return nil, fmt.Errorf("grub.cfg: slot %s command line sets %s, which the script sets", slot, k)
		}
		words = append(words, quote(w))
	}
	return words, nil
}

// Modules are the GRUB modules the script loads with insmod. Each is in
// Debian's stock grub-pc-bin and grub-efi-amd64-bin 2.06; normal, which runs
// the script, is loaded already, and set, unset and insmod are GRUB's
// kernel's own.
var Modules = []string{"part_gpt", "fat", "ext2", "loadenv", "test", "echo", "serial", "terminal", "linux"}

var cfgTemplate = template.Must(template.New("grub.cfg").Funcs(template.FuncMap{
	"countdown": func() []int {
		n := make([]int, MaxTries)
		for i := range n {
			n[i] = i + 1
		}
		return n
	},
	"sub1":    func(i int) int { return i - 1 },
	"modules": func() []string { return Modules },
}).Parse(cfgText))

// cfgText is the script. Comments in it are for a person reading the ESP;
// the package documentation says what it does and why.
const cfgText = `# stagehand grub.cfg: written by stagehand, which owns it; do not edit.
# It boots slot a or b from grubenv: see github.com/stagehand-dev/stagehand/grub.
{{- range modules}}
insmod {{.}}
{{- end}}

if serial --unit=0 --speed=115200; then
	terminal_input console serial
	terminal_output console serial
fi
set timeout=0
set timeout_style=hidden

# The slot to boot (stagehand_want) and why (stagehand_mode): slot a, unless
# stagehand_choose finds better in grubenv.
set stagehand_mode=noslot
set stagehand_want=a
set stagehand_slot=
set stagehand_trial=
set stagehand_tries=

function stagehand_choose {
	# GRUB 2.06 runs an unknown command as a success: without the test
	# module every "if [" below would take its first branch.
	if [ x = y ]; then
		echo "stagehand: GRUB has no working test command: not reading grubenv"
		return
	fi
	load_env -f {{.Env}} stagehand_slot stagehand_trial stagehand_tries
	if [ "x$stagehand_slot" = xa ]; then
		set stagehand_mode=good
		set stagehand_want=a
	elif [ "x$stagehand_slot" = xb ]; then
		set stagehand_mode=good
		set stagehand_want=b
	fi

	# A trial with tries left: count one down, and boot it only if grubenv,
	# read back, holds the new count.
	if [ "x$stagehand_trial" != xa -a "x$stagehand_trial" != xb ]; then
		return
	fi
	set stagehand_next=
{{- range $i, $n := countdown}}
	{{if $i}}elif{{else}}if{{end}} [ "x$stagehand_tries" = x{{$n}} ]; then
		set stagehand_next={{sub1 $n}}
{{- end}}
	else
		return
	fi
	set stagehand_tries="$stagehand_next"
	if save_env -f {{.Env}} stagehand_tries; then
		set stagehand_tries=
		load_env -f {{.Env}} stagehand_tries
		if [ "x$stagehand_tries" = "x$stagehand_next" ]; then
			set stagehand_mode=trial
			set stagehand_want="$stagehand_trial"
			return
		fi
	fi
	set stagehand_mode=nosave
	echo "stagehand: cannot save stagehand_tries=$stagehand_next in" {{.Env}} "so the trial of slot $stagehand_trial does not boot"
}
stagehand_choose

# Entry 0 is slot a, entry 1 slot b; a slot GRUB cannot load falls back to
# the other.
if [ "x$stagehand_want" = xa ]; then
	set default=0
	set fallback=1
else
	set default=1
	set fallback=0
fi
echo "stagehand: slot $stagehand_want ($stagehand_mode): stagehand_slot=$stagehand_slot stagehand_trial=$stagehand_trial stagehand_tries=$stagehand_tries"
set stagehand_ran=
{{range .Slots}}
menuentry 'stagehand slot {{.Name}}' --id stagehand-{{.Name}} {
	set stagehand_ran="${stagehand_ran}{{.Name}}"
	if [ -s {{.Kernel}} -a -s {{.Initramfs}} ]; then
		if linux {{.Kernel}} {{.Cmdline}} "{{$.Choice}}"; then
			initrd {{.Initramfs}}
		fi
	else
		echo "stagehand: slot {{.Name}}:" {{.Kernel}} or {{.Initramfs}} "is missing or empty"
	fi
}
{{end -}}
`
