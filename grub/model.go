package grub

import (
	"bytes"

	"github.com/stagehand-dev/stagehand/meta"
)

// The script's choice, in Go: what the stagehand grub.cfg does at one
// start of GRUB, for the simulated machine (apply/applytest) and the
// crash-state checker, which cannot run GRUB. TestModel runs both on the
// same grubenv blocks and compares them with what grub-emu's GRUB 2.06
// does.
//
// Choose is steps 2 to 4 of the package documentation: grubenv in, the
// script's choice and grubenv as save_env left it out. It reads grubenv
// as GRUB 2.06's load_env does (grub-core/lib/envblk.c,
// grub_envblk_iterate), not as package grubenv does: GRUB checks only the
// header, reads a file of any size, takes every line with a '=' that does
// not start with '#' as a variable (a name runs to the first '=', over
// newlines), the last of a name wins, a NUL ends a name or a value, and a
// line cut short ends the reading. It writes as save_env does
// (grub_envblk_set): the first line that starts with the name, its value
// replaced and the bytes after it moved, or a line appended to the free
// space (the '#'s at the block's end); a block that does not end in
// '\n' and '#'s, or has no room, is not written.
//
// Run is step 5: the entries GRUB runs, the wanted slot's, then the
// fallback's, given which load.

// envSignature starts a block GRUB reads (GRUB_ENVBLK_SIGNATURE).
const envSignature = "# GRUB Environment Block\n"

// Choose is what the script decides at one GRUB start, from grubenv's
// bytes as GRUB reads them (env, nil when there is no grubenv file) and
// whether save_env can write the file (writable: false where GRUB cannot,
// as on a device that is no disk): the choice, mode and wanted slot (Ran
// is empty: Run fills it in), and grubenv as save_env wrote it back, whole,
// through the file's sectors, nil when GRUB wrote nothing. A trial is
// counted in newEnv even when the script then finds the count did not
// read back and boots the good slot (mode nosave).
func Choose(env []byte, writable bool) (c Choice, newEnv []byte) {
	c = Choice{Mode: ModeNoSlot, Want: meta.SlotA}
	v := loadEnv(env, VarSlot, VarTrial, VarTries)
	switch v[VarSlot] {
	case "a", "b":
		c.Mode, c.Want = ModeGood, meta.Slot(v[VarSlot])
	}
	trial := v[VarTrial]
	if trial != "a" && trial != "b" {
		return c, nil
	}
	tries := v[VarTries]
	if len(tries) != 1 || tries[0] < '1' || tries[0] > '0'+MaxTries {
		return c, nil
	}
	next := string(tries[0] - 1)
	if !writable {
		c.Mode = ModeNoSave
		return c, nil
	}
	buf := bytes.Clone(env)
	if !envSet(buf, VarTries, next) {
		c.Mode = ModeNoSave // "environment block too small": nothing written
		return c, nil
	}
	if loadEnv(buf, VarTries)[VarTries] == next {
		c.Mode, c.Want = ModeTrial, meta.Slot(trial)
	} else {
		c.Mode = ModeNoSave
	}
	return c, buf
}

// Run is the entries GRUB runs for the choice c: the wanted slot's
// (default), then the other's (fallback) if that one does not load (its
// files missing or empty, its kernel refused), as loads tells. It returns
// c with Ran filled in, and whether an entry booted; false when neither
// loads (GRUB stops at its menu), Ran then naming both.
func (c Choice) Run(loads func(meta.Slot) bool) (Choice, bool) {
	c.Ran = ""
	for _, s := range []meta.Slot{c.Want, c.Want.Other()} {
		c.Ran += string(s)
		if loads(s) {
			return c, true
		}
	}
	return c, false
}

// loadEnv is "load_env -f FILE names...": the whitelisted variables the
// block sets, "" for those it does not (the script empties them first). A
// missing file (nil) or one GRUB does not take as a block sets none.
func loadEnv(buf []byte, names ...string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		out[n] = ""
	}
	envIterate(buf, func(name, value string) {
		if _, ok := out[name]; ok {
			out[name] = value
		}
	})
	return out
}

// envOpen is grub_envblk_open's check: more bytes than the signature, with
// its terminating NUL, and the signature first.
func envOpen(buf []byte) bool {
	return len(buf) >= len(envSignature)+1 && bytes.HasPrefix(buf, []byte(envSignature))
}

// cString is s as C sees it: up to its first NUL.
func cString(s []byte) string {
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s)
}

// findNextLine is envblk.c's find_next_line: the start of the line after
// the one p is in, a backslash escaping the byte after it.
func findNextLine(buf []byte, p int) int {
	for p < len(buf) {
		if buf[p] == '\\' {
			p += 2
		} else if buf[p] == '\n' {
			break
		} else {
			p++
		}
	}
	return p + 1
}

// envIterate is grub_envblk_iterate: fn for each variable, in order.
func envIterate(buf []byte, fn func(name, value string)) {
	if !envOpen(buf) {
		return
	}
	p, pend := len(envSignature), len(buf)
	for p < pend {
		if buf[p] != '#' {
			nameStart := p
			for p < pend && buf[p] != '=' {
				p++
			}
			if p == pend {
				return // broken
			}
			nameEnd := p
			p++
			valueStart := p
			for p < pend {
				if buf[p] == '\n' {
					break
				} else if buf[p] == '\\' {
					p += 2
				} else {
					p++
				}
			}
			if p >= pend {
				return // broken
			}
			var v []byte
			for q := valueStart; buf[q] != '\n'; q++ {
				if buf[q] == '\\' {
					q++
				}
				v = append(v, buf[q])
			}
			fn(cString(buf[nameStart:nameEnd]), cString(v))
		}
		p = findNextLine(buf, p)
	}
}

// escapedLen is the bytes value takes in a block: '\\' and '\n' escaped.
func escapedLen(value string) int {
	n := 0
	for i := 0; i < len(value); i++ {
		if value[i] == '\\' || value[i] == '\n' {
			n++
		}
		n++
	}
	return n
}

// envSet is grub_envblk_set on buf, in place (the block keeps its size):
// false when the block is broken or too small, buf then possibly changed
// as GRUB's buffer is (save_env then writes nothing).
func envSet(buf []byte, name, value string) bool {
	nl, vl := len(name), escapedLen(value)
	p, pend := len(envSignature), len(buf)
	// First, look at free space.
	space := pend - 1
	for space >= 0 && buf[space] == '#' {
		space--
	}
	if space < 0 || buf[space] != '\n' {
		return false // broken
	}
	space++
	found := false
	for p+nl+1 < space {
		if string(buf[p:p+nl]) == name && buf[p+nl] == '=' {
			// Found the same name.
			p += nl + 1
			l := 0
			for p+l < pend && buf[p+l] != '\n' {
				if buf[p+l] == '\\' {
					l += 2
				} else {
					l++
				}
			}
			if p+l >= pend {
				return false // broken
			}
			if pend-space < vl-l {
				return false // no space
			}
			if vl < l {
				// Move the following bytes backward, and fill the new
				// space with '#' (where GRUB does: past the old start
				// of the free space).
				copy(buf[p+vl:], buf[p+l:pend])
				for i := space + l - vl; i < space+2*(l-vl) && i < pend; i++ {
					buf[i] = '#'
				}
			} else {
				copy(buf[p+vl:pend], buf[p+l:])
			}
			found = true
			break
		}
		p = findNextLine(buf, p)
	}
	if !found {
		// Append a new variable.
		if pend-space < nl+1+vl+1 {
			return false // no space
		}
		copy(buf[space:], name)
		p = space + nl
		buf[p] = '='
		p++
	}
	for i := 0; i < len(value); i++ {
		if value[i] == '\\' || value[i] == '\n' {
			buf[p] = '\\'
			p++
		}
		buf[p] = value[i]
		p++
	}
	buf[p] = '\n'
	return true
}
