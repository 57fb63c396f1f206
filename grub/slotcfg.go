package grub

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/stagehand-dev/stagehand/meta"
)

// ErrBadSlotCfg marks a slot.cfg that does not parse (parseSlotCfg): a
// cut while it was written, or a hand edit. Slots leaves such a slot out
// (GRUB's entry for it boots it only if the file is whole to its last
// line), and the apply writes it again.
var ErrBadSlotCfg = errors.New("not a valid slot.cfg")

// slotCfg is what a slot's slot.cfg (stagehand/X/slot.cfg) holds: the
// command line GRUB passes, and what the backend gives back. Kernel and
// initramfs lie beside it, at fixed names.
//
// The file is GRUB script, which the slot's menu entry sources, and at the
// same time a strict format the backend parses (parseSlotCfg): a comment
// line, then one assignment a line, each value in single quotes, in this
// order, the last saying the file is whole:
//
//	# stagehand slot b: written by stagehand, read by grub/grub.cfg; do not edit.
//	stagehand_version='1.2.3'
//	stagehand_trial_tries='2'
//	stagehand_cmdline='console=ttyS0 root=PARTLABEL=ROOT-B ro'
//	stagehand_ready='b'
//
// GRUB keeps what is between single quotes as it is; no value holds one
// (check).
type slotCfg struct {
	Version string
	// Cmdline is the kernel command line without the parameters the
	// script adds (SlotParam, ChoiceParam, PartUUIDParam): its words
	// separated by one space.
	Cmdline string
	// Tries is what SetBootOnce gives the slot's trial: 1 to MaxTries.
	Tries int
}

// The variables slot.cfg sets, in the order marshal writes them; the
// entry of the script unsets them before it sources the file. cfgTries is
// not VarTries, grubenv's count, which the script reads.
const (
	cfgVersion = "stagehand_version"
	cfgTries   = "stagehand_trial_tries"
	cfgCmdline = "stagehand_cmdline"
	cfgReady   = "stagehand_ready" // the slot's letter: the file is whole
)

var cfgVars = []string{cfgVersion, cfgTries, cfgCmdline, cfgReady}

// marshal writes c as slot's slot.cfg. parseSlotCfg reads it back.
func (c slotCfg) marshal(slot meta.Slot) ([]byte, error) {
	if err := c.check(slot); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# stagehand slot %s: written by stagehand, read by %s; do not edit.\n", slot, CfgPath)
	for _, kv := range [][2]string{
		{cfgVersion, c.Version},
		{cfgTries, strconv.Itoa(c.Tries)},
		{cfgCmdline, c.Cmdline},
		{cfgReady, string(slot)},
	} {
		b.WriteString(kv[0] + "=" + quote(kv[1]) + "\n")
	}
	return []byte(b.String()), nil
}

// check refuses what marshal could not write so that GRUB and
// parseSlotCfg read it back the same.
func (c slotCfg) check(slot meta.Slot) error {
	if err := checkSlot(slot); err != nil {
		return err
	}
	if err := checkVersion(c.Version); err != nil {
		return fmt.Errorf("slot %s: %w", slot, err)
	}
	if c.Tries < 1 || c.Tries > MaxTries {
		return fmt.Errorf("slot %s: %d tries is not between 1 and %d", slot, c.Tries, MaxTries)
	}
	return checkCmdline(slot, c.Cmdline)
}

// checkVersion refuses a version that is not one line of printable UTF-8
// without quotes or backslashes.
func checkVersion(v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("version %q is not UTF-8", v)
	}
	for _, r := range v {
		switch {
		case r < 0x20 || r == 0x7f:
			return fmt.Errorf("version %q holds the control character %U", v, r)
		case r == '\'' || r == '"' || r == '\\':
			return fmt.Errorf("version %q holds %q, which slot.cfg cannot hold", v, r)
		}
	}
	return nil
}

// checkCmdline refuses a command line that GRUB would not pass on word for
// word and byte for byte (see safe), one that is not its words separated by
// one space, and one that sets a parameter the script adds.
func checkCmdline(slot meta.Slot, cmdline string) error {
	if cmdline != strings.Join(strings.Fields(cmdline), " ") {
		return fmt.Errorf("slot %s: command line %q is not its words separated by one space", slot, cmdline)
	}
	for _, w := range strings.Fields(cmdline) {
		if err := safe(w); err != nil {
			return fmt.Errorf("slot %s: command line word %q: %w", slot, w, err)
		}
		switch k, _, _ := strings.Cut(w, "="); k {
		case SlotParam, ChoiceParam, PartUUIDParam:
			return fmt.Errorf("slot %s: command line sets %s, which the script sets", slot, k)
		}
	}
	return nil
}

// parseSlotCfg reads slot's slot.cfg strictly: lines ending in '\n', each
// a comment (starting with '#') or NAME='VALUE'; the four variables
// exactly once, in marshal's order, and nothing else: no blank line, no
// other line, no control character; tries one digit from 1 to MaxTries;
// ready the slot's letter, and no assignment after it; a version and a
// command line that check accepts. Errors wrap ErrBadSlotCfg and name the
// line.
func parseSlotCfg(slot meta.Slot, b []byte) (slotCfg, error) {
	bad := func(line int, format string, a ...any) error {
		where := ""
		if line > 0 {
			where = fmt.Sprintf("line %d: ", line)
		}
		return fmt.Errorf("%w: %s%s", ErrBadSlotCfg, where, fmt.Sprintf(format, a...))
	}
	if len(b) == 0 {
		return slotCfg{}, bad(0, "empty")
	}
	if b[len(b)-1] != '\n' {
		return slotCfg{}, bad(0, "the last line does not end in a newline (cut short?)")
	}
	var c slotCfg
	next := 0 // the index in cfgVars of the variable due
	for i, line := range strings.Split(string(b[:len(b)-1]), "\n") {
		n := i + 1
		if line == "" {
			return slotCfg{}, bad(n, "blank line")
		}
		if j := strings.IndexFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }); j >= 0 {
			return slotCfg{}, bad(n, "control character %q at %d", line[j], j+1)
		}
		if !utf8.ValidString(line) {
			return slotCfg{}, bad(n, "not UTF-8")
		}
		if line[0] == '#' {
			continue
		}
		if next == len(cfgVars) {
			return slotCfg{}, bad(n, "%q after %s", line, cfgReady)
		}
		k, q, ok := strings.Cut(line, "=")
		if !ok {
			return slotCfg{}, bad(n, "%q is neither a comment nor NAME='VALUE'", line)
		}
		if k != cfgVars[next] {
			return slotCfg{}, bad(n, "%q where %s is due", k, cfgVars[next])
		}
		next++
		if len(q) < 2 || q[0] != '\'' || q[len(q)-1] != '\'' || strings.Contains(q[1:len(q)-1], "'") {
			return slotCfg{}, bad(n, "%s's value %s is not one word in single quotes", k, q)
		}
		v := q[1 : len(q)-1]
		switch k {
		case cfgVersion:
			c.Version = v
		case cfgTries:
			t, err := strconv.Atoi(v)
			if err != nil || len(v) != 1 || t < 1 || t > MaxTries {
				return slotCfg{}, bad(n, "tries %q is not one digit from 1 to %d", v, MaxTries)
			}
			c.Tries = t
		case cfgCmdline:
			c.Cmdline = v
		case cfgReady:
			if v != string(slot) {
				return slotCfg{}, bad(n, "%s is %q, not this slot's letter %s", k, v, slot)
			}
		}
	}
	if next < len(cfgVars) {
		return slotCfg{}, bad(0, "no %s (cut short?)", cfgVars[next])
	}
	if err := c.check(slot); err != nil {
		return slotCfg{}, bad(0, "%v", err)
	}
	return c, nil
}
