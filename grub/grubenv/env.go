package grubenv

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

const (
	// Size is the size of a block, as grub-editenv creates it.
	Size = 1024
	// SectorSize is the unit a disk writes whole.
	SectorSize = 512
	// Header starts every block (GRUB_ENVBLK_SIGNATURE).
	Header = "# GRUB Environment Block\n"
)

var (
	// ErrInvalid is wrapped by errors for blocks, names and values that GRUB
	// would not read back as they were meant.
	ErrInvalid = errors.New("invalid environment block")
	// ErrTooSmall is wrapped when the variables do not fit (GRUB's own words).
	ErrTooSmall = errors.New("environment block too small")
)

// Error says what is wrong and where. It wraps ErrInvalid or ErrTooSmall.
type Error struct {
	Offset int // byte offset in the block, or -1
	Reason string
	Err    error
}

func (e *Error) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("grubenv: %s: %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("grubenv: offset %d: %s: %v", e.Offset, e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func invalid(off int, format string, a ...any) error {
	return &Error{Offset: off, Reason: fmt.Sprintf(format, a...), Err: ErrInvalid}
}

// line is one line of the block: a variable, a comment, or the sector pad.
type line struct {
	name, value string // a variable when name != ""
	comment     string // a comment, without its '\n'
	pad         bool
}

// Env is a parsed block: its variables and comments in order.
// The zero value is an empty block, as upstream grub-editenv create makes it.
type Env struct {
	lines []line
}

// Parse reads a block. It copies what it keeps; b may be reused.
func Parse(b []byte) (*Env, error) {
	if len(b) != Size {
		return nil, invalid(-1, "block is %d bytes, want %d", len(b), Size)
	}
	if !bytes.HasPrefix(b, []byte(Header)) {
		return nil, invalid(0, "no %q header", strings.TrimSuffix(Header, "\n"))
	}
	end := len(b)
	for end > len(Header) && b[end-1] == '#' {
		end--
	}
	if b[end-1] != '\n' {
		return nil, invalid(end-1, "no newline before the '#' padding")
	}
	e := &Env{}
	seen := map[string]bool{}
	for p := len(Header); p < end; {
		if b[p] == '#' {
			n := bytes.IndexByte(b[p:end], '\n')
			c := b[p : p+n]
			if i := bytes.IndexAny(c, "\\\x00"); i >= 0 {
				return nil, invalid(p+i, "backslash or NUL in a comment")
			}
			if p+n == SectorSize-1 && len(bytes.Trim(c, "#")) == 0 {
				e.lines = append(e.lines, line{pad: true})
			} else {
				e.lines = append(e.lines, line{comment: string(c)})
			}
			p += n + 1
			continue
		}
		eq := bytes.IndexAny(b[p:end], "=\n")
		if eq < 0 || b[p+eq] != '=' {
			return nil, invalid(p, "line without '='")
		}
		name := string(b[p : p+eq])
		if err := checkName(name); err != nil {
			return nil, invalid(p, "%v", err)
		}
		if seen[name] {
			return nil, invalid(p, "variable %q set twice", name)
		}
		seen[name] = true
		var v []byte
		i := p + eq + 1
		for ; b[i] != '\n'; i++ {
			switch b[i] {
			case 0:
				return nil, invalid(i, "NUL in the value of %q", name)
			case '\\':
				if i+1 >= end-1 || (b[i+1] != '\\' && b[i+1] != '\n') {
					return nil, invalid(i, "backslash not before '\\' or newline in the value of %q", name)
				}
				i++
			}
			v = append(v, b[i])
		}
		e.lines = append(e.lines, line{name: name, value: string(v)})
		p = i + 1
	}
	return e, nil
}

// MarshalBinary returns the block, Size bytes, or an error wrapping
// ErrTooSmall when the lines do not fit (in the first sector, with a pad).
func (e *Env) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, Size)
	b = append(b, Header...)
	for _, l := range e.lines {
		switch {
		case l.pad:
			if len(b) > SectorSize-2 {
				return nil, &Error{Offset: -1, Err: ErrTooSmall,
					Reason: fmt.Sprintf("first sector needs %d bytes, has %d", len(b)+2, SectorSize)}
			}
			for len(b) < SectorSize-1 {
				b = append(b, '#')
			}
			b = append(b, '\n')
		case l.name == "":
			b = append(b, l.comment...)
			b = append(b, '\n')
		default:
			b = append(b, l.name...)
			b = append(b, '=')
			for i := 0; i < len(l.value); i++ {
				if c := l.value[i]; c == '\\' || c == '\n' {
					b = append(b, '\\')
				}
				b = append(b, l.value[i])
			}
			b = append(b, '\n')
		}
		if len(b) > Size {
			return nil, &Error{Offset: -1, Err: ErrTooSmall,
				Reason: fmt.Sprintf("%d bytes or more do not fit in %d", len(b), Size)}
		}
	}
	return append(b, bytes.Repeat([]byte{'#'}, Size-len(b))...), nil
}

func (e *Env) index(name string) int {
	return slices.IndexFunc(e.lines, func(l line) bool { return l.name == name })
}

// Get returns the value of a variable and whether it is set.
func (e *Env) Get(name string) (string, bool) {
	if i := e.index(name); i >= 0 {
		return e.lines[i].value, true
	}
	return "", false
}

// Keys returns the names of the variables in block order.
func (e *Env) Keys() []string {
	var keys []string
	for _, l := range e.lines {
		if l.name != "" {
			keys = append(keys, l.name)
		}
	}
	return keys
}

// Set sets a variable as GRUB does: in its place if it is set, else after
// the last line.
func (e *Env) Set(name, value string) error {
	if err := check(name, value); err != nil {
		return err
	}
	if i := e.index(name); i >= 0 {
		e.lines[i].value = value
		return nil
	}
	e.lines = append(e.lines, line{name: name, value: value})
	return nil
}

// SetFirst sets a variable that must stay in the first sector: in its place
// if it is set before the sector pad, else at the end of the first sector. It
// adds the pad after the last line if the block has none, and refuses a
// variable that is set after the pad.
func (e *Env) SetFirst(name, value string) error {
	if err := check(name, value); err != nil {
		return err
	}
	pad := slices.IndexFunc(e.lines, func(l line) bool { return l.pad })
	if pad < 0 {
		e.lines = append(e.lines, line{pad: true})
		pad = len(e.lines) - 1
	}
	switch i := e.index(name); {
	case i > pad:
		return invalid(-1, "variable %q is stored after the first sector", name)
	case i >= 0:
		e.lines[i].value = value
	default:
		e.lines = slices.Insert(e.lines, pad, line{name: name, value: value})
	}
	return nil
}

// Delete removes a variable, if it is set.
func (e *Env) Delete(name string) {
	if i := e.index(name); i >= 0 {
		e.lines = slices.Delete(e.lines, i, i+1)
	}
}

func check(name, value string) error {
	if err := checkName(name); err != nil {
		return invalid(-1, "%v", err)
	}
	if strings.IndexByte(value, 0) >= 0 {
		return invalid(-1, "NUL in the value of %q", name)
	}
	return nil
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name[0] == '#':
		return fmt.Errorf("name %q starts with '#'", name)
	case strings.ContainsAny(name, "=\n\\\x00"):
		return fmt.Errorf("name %q holds '=', newline, backslash or NUL", name)
	}
	return nil
}
