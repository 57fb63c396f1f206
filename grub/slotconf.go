package grub

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/stagehand-dev/stagehand/meta"
)

// ErrBadSlotConf marks a slot.conf that does not parse (parseSlotConf): a
// cut while it was written, or a hand edit. Slots leaves such a slot out,
// as GRUB cannot be given its command line, and the apply writes it again.
var ErrBadSlotConf = errors.New("not a valid slot.conf")

// slotConf is what a slot's slot.conf (stagehand/X/slot.conf) holds: what
// GRUB does not need and the backend gives back. Kernel and initramfs lie
// beside it, at fixed names.
type slotConf struct {
	Version string
	// Cmdline is the kernel command line without SlotParam and
	// ChoiceParam: its words separated by one space.
	Cmdline string
	// Tries is what SetBootOnce gives the slot's trial: 1 to MaxTries.
	Tries int
}

// The keys of slot.conf, in the order marshal writes them.
const (
	confVersion = "version"
	confTries   = "tries"
	confCmdline = "cmdline"
)

// marshal writes c as slot.conf: a comment line, then one key=value line
// for each of version, tries and cmdline. parseSlotConf reads it back.
//
//	# stagehand slot b: written and read by stagehand, not by GRUB (see grub.cfg); do not edit.
//	version=1.2.3
//	tries=2
//	cmdline=console=ttyS0 root=PARTLABEL=ROOT-B ro
func (c slotConf) marshal(slot meta.Slot) ([]byte, error) {
	if err := c.check(slot); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# stagehand slot %s: written and read by stagehand, not by GRUB (see %s); do not edit.\n", slot, CfgPath)
	fmt.Fprintf(&b, "%s=%s\n%s=%d\n%s=%s\n", confVersion, c.Version, confTries, c.Tries, confCmdline, c.Cmdline)
	return b.Bytes(), nil
}

// check refuses what marshal could not write so that parseSlotConf reads
// it back the same, and what Render refuses.
func (c slotConf) check(slot meta.Slot) error {
	if err := checkVersion(c.Version); err != nil {
		return fmt.Errorf("slot %s: %w", slot, err)
	}
	if c.Tries < 1 || c.Tries > MaxTries {
		return fmt.Errorf("slot %s: %d tries is not between 1 and %d", slot, c.Tries, MaxTries)
	}
	if c.Cmdline != strings.Join(strings.Fields(c.Cmdline), " ") {
		return fmt.Errorf("slot %s: command line %q is not its words separated by one space", slot, c.Cmdline)
	}
	if _, err := cmdlineWords(string(slot), c.Cmdline); err != nil {
		return err
	}
	return nil
}

// checkVersion refuses a version that is not one line of printable UTF-8.
func checkVersion(v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("version %q is not UTF-8", v)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("version %q holds the control character %U", v, r)
		}
	}
	return nil
}

// parseSlotConf reads a slot.conf strictly: lines ending in '\n', each a
// comment (starting with '#') or key=value; version, tries and cmdline
// each exactly once, in any order, and nothing else: no blank line, no
// other key, no control character; tries one digit from 1 to MaxTries; a
// command line of words separated by one space that Render accepts. Errors
// wrap ErrBadSlotConf and name the line.
func parseSlotConf(slot meta.Slot, b []byte) (slotConf, error) {
	bad := func(line int, format string, a ...any) error {
		where := ""
		if line > 0 {
			where = fmt.Sprintf("line %d: ", line)
		}
		return fmt.Errorf("%w: %s%s", ErrBadSlotConf, where, fmt.Sprintf(format, a...))
	}
	if len(b) == 0 {
		return slotConf{}, bad(0, "empty")
	}
	if b[len(b)-1] != '\n' {
		return slotConf{}, bad(0, "the last line does not end in a newline (cut short?)")
	}
	var c slotConf
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b[:len(b)-1]), "\n") {
		n := i + 1
		if line == "" {
			return slotConf{}, bad(n, "blank line")
		}
		if j := strings.IndexFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }); j >= 0 {
			return slotConf{}, bad(n, "control character %q at %d", line[j], j+1)
		}
		if !utf8.ValidString(line) {
			return slotConf{}, bad(n, "not UTF-8")
		}
		if line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return slotConf{}, bad(n, "%q is neither a comment nor key=value", line)
		}
		if seen[k] {
			return slotConf{}, bad(n, "%s set twice", k)
		}
		seen[k] = true
		switch k {
		case confVersion:
			c.Version = v
		case confTries:
			t, err := strconv.Atoi(v)
			if err != nil || len(v) != 1 || t < 1 || t > MaxTries {
				return slotConf{}, bad(n, "tries %q is not one digit from 1 to %d", v, MaxTries)
			}
			c.Tries = t
		case confCmdline:
			c.Cmdline = v
		default:
			return slotConf{}, bad(n, "unknown key %q", k)
		}
	}
	for _, k := range []string{confVersion, confTries, confCmdline} {
		if !seen[k] {
			return slotConf{}, bad(0, "no %s", k)
		}
	}
	if err := c.check(slot); err != nil {
		return slotConf{}, bad(0, "%v", err)
	}
	return c, nil
}
