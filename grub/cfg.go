package grub

import (
	"fmt"
	"strconv"
	"strings"
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
// boots, after the slot's own (from its slot.cfg). SlotParam is the same as
// boot.SlotParam, PartUUIDParam as disk.PartUUIDParam.
const (
	SlotParam = "stagehand.slot"
	// ChoiceParam is MODE:WANT:RAN (see the package documentation).
	ChoiceParam = "stagehand.grub"
	// PartUUIDParam is the GPT partition GUID of the partition the script
	// runs from, GRUB's $root, lower-case; absent when GRUB's probe
	// cannot tell it.
	PartUUIDParam = "stagehand.partuuid"
)

// Modes of ChoiceParam: why the script wanted the slot it wanted.
const (
	ModeTrial  = "trial"  // a trial's try, counted down and saved
	ModeGood   = "good"   // the good slot, no trial due (none, or its tries used up)
	ModeNoSave = "nosave" // a trial was due but save_env failed: the good slot instead
	ModeNoSlot = "noslot" // stagehand_slot missing or invalid: slot a
)

// Slot is what the script boots for one slot: paths on the boot file
// system (the device GRUB's $root names when the script runs), from its
// root.
type Slot struct {
	// Kernel and Initramfs: "/stagehand/a/vmlinuz".
	Kernel, Initramfs string
	// Cfg is the slot's slot.cfg, which its entry sources for the
	// command line (see Loader): "/stagehand/a/slot.cfg".
	Cfg string
}

// Config is what the script is rendered from. It holds no command line:
// the script is the same whatever the slots hold, and is written once.
type Config struct {
	// Env is the path of the grubenv file on the boot file system, from
	// its root, next to grub.cfg: "/grub/grubenv".
	Env  string
	A, B Slot
}

// Render returns the grub.cfg for c. It refuses paths that GRUB would not
// pass on byte for byte: relative ones, and those with blanks, quotes,
// backslashes, control or non-ASCII characters.
func Render(c Config) ([]byte, error) {
	if err := checkPath("grubenv", c.Env); err != nil {
		return nil, err
	}
	var slots []slotPaths
	for i, s := range []Slot{c.A, c.B} {
		name := string(rune('a' + i))
		for _, p := range [][2]string{{"kernel", s.Kernel}, {"initramfs", s.Initramfs}, {"slot.cfg", s.Cfg}} {
			if err := checkPath("slot "+name+" "+p[0], p[1]); err != nil {
				return nil, err
			}
		}
		slots = append(slots, slotPaths{
			name:      name,
			kernel:    quote(s.Kernel),
			initramfs: quote(s.Initramfs),
			cfg:       quote(s.Cfg),
		})
	}
	return script(quote(c.Env), slots), nil
}

// slotPaths are a slot's letter and its paths, quoted for GRUB.
type slotPaths struct {
	name, kernel, initramfs, cfg string
}

// quote makes s one literal GRUB word. checkPath and slotCfg.check have
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

// Modules are the GRUB modules the script loads with insmod. Each is in
// Debian's stock grub-pc-bin and grub-efi-amd64-bin 2.06; normal, which runs
// the script, is loaded already, and set, unset and insmod are GRUB's
// kernel's own. configfile has source, probe probe.
var Modules = []string{"part_gpt", "fat", "ext2", "loadenv", "test", "echo", "serial", "terminal", "linux", "configfile", "probe"}

// script writes the script. Comments in it are for a person reading the
// ESP; the package documentation says what it does and why. env is the
// quoted path of grubenv.
func script(env string, slots []slotPaths) []byte {
	var b strings.Builder
	b.WriteString(`# stagehand grub.cfg: written by stagehand, which owns it; do not edit.
# It boots slot a or b from grubenv: see github.com/stagehand-dev/stagehand/grub.
`)
	for _, m := range Modules {
		b.WriteString("insmod " + m + "\n")
	}
	b.WriteString(`
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
	load_env -f ` + env + ` stagehand_slot stagehand_trial stagehand_tries
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
`)
	for n := 1; n <= MaxTries; n++ {
		kw := "elif"
		if n == 1 {
			kw = "if"
		}
		b.WriteString("\t" + kw + ` [ "x$stagehand_tries" = x` + strconv.Itoa(n) + " ]; then\n")
		b.WriteString("\t\tset stagehand_next=" + strconv.Itoa(n-1) + "\n")
	}
	b.WriteString(`	else
		return
	fi
	set stagehand_tries="$stagehand_next"
	if save_env -f ` + env + ` stagehand_tries; then
		set stagehand_tries=
		load_env -f ` + env + ` stagehand_tries
		if [ "x$stagehand_tries" = "x$stagehand_next" ]; then
			set stagehand_mode=trial
			set stagehand_want="$stagehand_trial"
			return
		fi
	fi
	set stagehand_mode=nosave
	echo "stagehand: cannot save stagehand_tries=$stagehand_next in" ` + env + ` "so the trial of slot $stagehand_trial does not boot"
}
stagehand_choose

# The partition this script runs from, $root, for the kernel to find its
# disk by: its GPT partition GUID, passed only if probe tells one (it says
# none for a device that is no partition).
set stagehand_partuuid=
set stagehand_partuuid_arg=
if probe --set stagehand_partuuid --part-uuid "$root"; then
	if [ "x$stagehand_partuuid" != x -a "x$stagehand_partuuid" != xnone ]; then
		set stagehand_partuuid_arg="` + PartUUIDParam + `=$stagehand_partuuid"
	fi
fi
echo "stagehand: partition GUID of $root: $stagehand_partuuid"

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

# Each entry reads its slot's command line from the slot's slot.cfg, which
# stagehand writes last when it installs the slot, and boots the slot only
# if the file's last line sets ` + cfgReady + ` to the slot's letter: not one
# cut short.
`)
	choice := `"` + ChoiceParam + `=${stagehand_mode}:${stagehand_want}:${stagehand_ran}"`
	for _, s := range slots {
		b.WriteString(`
menuentry 'stagehand slot ` + s.name + `' --id stagehand-` + s.name + ` {
	set stagehand_ran="${stagehand_ran}` + s.name + `"
`)
		for _, v := range cfgVars {
			b.WriteString("\tunset " + v + "\n")
		}
		b.WriteString(`	if [ -s ` + s.cfg + ` ]; then
		source ` + s.cfg + `
	fi
	if [ "x$` + cfgReady + `" != x` + s.name + ` ]; then
		echo "stagehand: slot ` + s.name + `:" ` + s.cfg + ` "is missing or incomplete"
	elif [ -s ` + s.kernel + ` -a -s ` + s.initramfs + ` ]; then
		if linux ` + s.kernel + ` $` + cfgCmdline + ` '` + SlotParam + `=` + s.name + `' ` + choice + ` $stagehand_partuuid_arg; then
			initrd ` + s.initramfs + `
		fi
	else
		echo "stagehand: slot ` + s.name + `:" ` + s.kernel + ` or ` + s.initramfs + ` "is missing or empty"
	fi
}
`)
	}
	return []byte(b.String())
}
