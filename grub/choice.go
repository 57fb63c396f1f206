package grub

import (
	"context"
	"fmt"
	"strings"

	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/meta"
)

// Choice is the value of ChoiceParam, MODE:WANT:RAN: what the script
// chose, and what GRUB ran (see the package documentation).
type Choice struct {
	Mode string    // ModeTrial, ModeGood, ModeNoSave or ModeNoSlot
	Want meta.Slot // the slot the script chose
	Ran  string    // the entries GRUB ran, in order, one slot letter each; the last booted
}

// Booted is the slot whose entry booted: the last of Ran.
func (c Choice) Booted() meta.Slot { return meta.Slot(c.Ran[len(c.Ran)-1:]) }

func (c Choice) String() string { return c.Mode + ":" + string(c.Want) + ":" + c.Ran }

// ParseChoice reads ChoiceParam's value, refusing what the script does not
// write: a mode it does not set, a wanted slot other than a or b, an empty
// RAN or one with other letters.
func ParseChoice(v string) (Choice, error) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 {
		return Choice{}, fmt.Errorf("%s=%q is not MODE:WANT:RAN", ChoiceParam, v)
	}
	c := Choice{Mode: parts[0], Want: meta.Slot(parts[1]), Ran: parts[2]}
	switch c.Mode {
	case ModeTrial, ModeGood, ModeNoSave, ModeNoSlot:
	default:
		return Choice{}, fmt.Errorf("%s=%q: mode %q is none of the script's", ChoiceParam, v, c.Mode)
	}
	if c.Want != meta.SlotA && c.Want != meta.SlotB {
		return Choice{}, fmt.Errorf("%s=%q: wanted slot %q is not a or b", ChoiceParam, v, c.Want)
	}
	if c.Ran == "" || strings.Trim(c.Ran, "ab") != "" {
		return Choice{}, fmt.Errorf("%s=%q: the entries run, %q, are not slot letters", ChoiceParam, v, c.Ran)
	}
	return c, nil
}

// choice is this boot's ChoiceParam: ok false when the command line has
// none, an error when it is malformed.
func (l *Loader) choice() (Choice, bool, error) {
	v, ok := cmdline.Get(l.runningCmdline(), ChoiceParam)
	if !ok {
		return Choice{}, false, nil
	}
	c, err := ParseChoice(v)
	if err != nil {
		return Choice{}, false, fmt.Errorf("the kernel command line's %w", err)
	}
	return c, true, nil
}

// BootedSlot implements boot.BootRecord: the slot whose entry GRUB booted,
// the last of ChoiceParam's RAN; not known without the parameter (a kernel
// GRUB did not start, or one kexec'd by a stagehand that did not pass it
// on), and an error when it is malformed. A kernel kexec'd with a slot's
// Slots command line carries the parameter of the firmware boot before it.
func (l *Loader) BootedSlot(ctx context.Context) (meta.Slot, bool, error) {
	c, ok, err := l.choice()
	if err != nil || !ok {
		return "", false, err
	}
	return c.Booted(), true, nil
}

// BootedPlain implements boot.BootRecord: GRUB booted slot as the good
// slot, no trial due (mode good), the entry it wanted and ran.
func (l *Loader) BootedPlain(ctx context.Context, slot meta.Slot) (bool, error) {
	if err := checkSlot(slot); err != nil {
		return false, err
	}
	c, ok, err := l.choice()
	if err != nil || !ok {
		return false, err
	}
	return c.Mode == ModeGood && c.Want == slot && c.Booted() == slot, nil
}
