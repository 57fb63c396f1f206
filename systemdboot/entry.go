package systemdboot

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Field is one "key value" line of a systemd-boot configuration file.
type Field struct{ Key, Value string }

// ParseConfig reads a systemd-boot configuration file (a loader entry or
// loader.conf) as systemd-boot does: one "key value" per line, key and
// value separated by spaces or tabs, surrounding blanks dropped, one pair
// of double quotes around the value removed; blank lines, comments (#) and
// keys without a value are skipped.
func ParseConfig(b []byte) []Field {
	var fs []Field
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.Trim(line, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '\t'); i >= 0 && (!ok || i < len(k)) {
			k, v, ok = line[:i], line[i+1:], true
		}
		if !ok {
			continue
		}
		v = strings.Trim(v, " \t")
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if v == "" {
			continue
		}
		fs = append(fs, Field{k, v})
	}
	return fs
}

// FormatConfig writes fields so that ParseConfig reads them back.
func FormatConfig(fs []Field) ([]byte, error) {
	var b bytes.Buffer
	for _, f := range fs {
		if err := checkField(f); err != nil {
			return nil, err
		}
		v := f.Value
		if v[0] == '"' && v[len(v)-1] == '"' || strings.Trim(v, " \t\r") != v {
			v = `"` + v + `"`
		}
		fmt.Fprintf(&b, "%s %s\n", f.Key, v)
	}
	return b.Bytes(), nil
}

func checkField(f Field) error {
	if f.Key == "" || f.Key[0] == '#' || f.Key[0] == '\r' || strings.ContainsAny(f.Key, " \t\n") {
		return fmt.Errorf("configuration key %q is empty or holds blanks", f.Key)
	}
	if f.Value == "" || strings.ContainsRune(f.Value, '\n') {
		return fmt.Errorf("configuration value of %s (%q) is empty or spans lines", f.Key, f.Value)
	}
	return nil
}

// Entry is a Boot Loader Specification Type #1 entry (loader/entries/*.conf).
type Entry struct {
	Title   string
	Version string
	Linux   string   // kernel path on the ESP, from its root ("/stagehand/a/vmlinuz")
	Initrd  []string // initramfs paths, loaded in order
	Options string   // kernel command line (several options lines are joined)
	Extra   []Field  // other keys (machine-id, sort-key, ...), kept in order
}

// ParseEntry reads an entry file.
func ParseEntry(b []byte) (*Entry, error) {
	e := &Entry{}
	var opts []string
	for _, f := range ParseConfig(b) {
		switch f.Key {
		case "title":
			e.Title = f.Value
		case "version":
			e.Version = f.Value
		case "linux":
			e.Linux = f.Value
		case "initrd":
			e.Initrd = append(e.Initrd, f.Value)
		case "options":
			opts = append(opts, f.Value)
		default:
			e.Extra = append(e.Extra, f)
		}
	}
	e.Options = strings.Join(opts, " ")
	if e.Linux == "" {
		return nil, errors.New("loader entry has no linux line")
	}
	return e, nil
}

// Marshal writes the entry file.
func (e *Entry) Marshal() ([]byte, error) {
	var fs []Field
	add := func(k, v string) {
		if v != "" {
			fs = append(fs, Field{k, v})
		}
	}
	add("title", e.Title)
	add("version", e.Version)
	for _, f := range e.Extra {
		switch f.Key {
		case "title", "version", "linux", "initrd", "options":
			return nil, fmt.Errorf("loader entry has %s among its extra keys", f.Key)
		}
		fs = append(fs, f)
	}
	if e.Linux == "" {
		return nil, errors.New("loader entry has no linux line")
	}
	add("linux", e.Linux)
	for _, i := range e.Initrd {
		if i == "" {
			return nil, errors.New("loader entry has an empty initrd")
		}
		add("initrd", i)
	}
	add("options", e.Options)
	return FormatConfig(fs)
}

// EntryName is the file name of an entry: its ID and, when boot counting
// is on, the tries left and done ("stagehand-b+2-1.conf": ID stagehand-b,
// 2 left, 1 done). systemd-boot renames the file before each try
// (+3 → +2-1 → +1-2 → +0-3); at +0 the entry is bad and is tried last.
type EntryName struct {
	ID       string // without .conf (.efi) and without the counter
	Counting bool   // the name carries +LEFT[-DONE]
	Left     int
	Done     int
	UKI      bool // a Type #2 entry: a unified kernel image, NAME.efi under EFI/Linux
}

// ParseEntryName reads an entry file name, which ends in .conf. Like
// systemd-boot, a suffix that is not a well-formed counter stays part of
// the ID.
func ParseEntryName(name string) (EntryName, error) { return parseName(name, false) }

// ParseUKIName reads the file name of a Type #2 entry (a unified kernel
// image under EFI/Linux), which ends in .efi, as ParseEntryName does.
func ParseUKIName(name string) (EntryName, error) { return parseName(name, true) }

func parseName(name string, uki bool) (EntryName, error) {
	ext := ".conf"
	if uki {
		ext = ".efi"
	}
	base, ok := strings.CutSuffix(name, ext)
	if !ok || base == "" || strings.ContainsAny(name, "/\x00") {
		return EntryName{}, fmt.Errorf("loader entry file name %q is not NAME%s", name, ext)
	}
	i := strings.LastIndexByte(base, '+')
	if i <= 0 {
		return EntryName{ID: base, UKI: uki}, nil
	}
	left, done, hasDone := strings.Cut(base[i+1:], "-")
	l, err1 := parseCounter(left)
	d, err2 := 0, error(nil)
	if hasDone {
		d, err2 = parseCounter(done)
	}
	if err1 != nil || err2 != nil {
		return EntryName{ID: base, UKI: uki}, nil
	}
	return EntryName{ID: base[:i], Counting: true, Left: l, Done: d, UKI: uki}, nil
}

func parseCounter(s string) (int, error) {
	if s == "" || len(s) > 9 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a counter")
	}
	return strconv.Atoi(s)
}

// String is the file name: ID[+LEFT[-DONE]].conf (.efi for a UKI). A
// counter without tries done is written without them, as systemd writes a
// fresh entry.
func (n EntryName) String() string {
	ext := ".conf"
	if n.UKI {
		ext = ".efi"
	}
	if !n.Counting {
		return n.ID + ext
	}
	if n.Done == 0 {
		return fmt.Sprintf("%s+%d%s", n.ID, n.Left, ext)
	}
	return fmt.Sprintf("%s+%d-%d%s", n.ID, n.Left, n.Done, ext)
}

// Plain is the name without its counter.
func (n EntryName) Plain() EntryName { return EntryName{ID: n.ID, UKI: n.UKI} }

// Path is the entry file's path on the ESP: loader/entries/NAME.conf, or
// EFI/Linux/NAME.efi for a UKI.
func (n EntryName) Path() string {
	if n.UKI {
		return ukiDir + "/" + n.String()
	}
	return entriesDir + "/" + n.String()
}
