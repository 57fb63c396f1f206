// Package cmdline parses the kernel command line as the kernel does: words
// split on spaces outside double quotes, each `key` or `key=value`.
package cmdline

import "strings"

// Param is one word of the command line.
type Param struct {
	Key   string
	Value string
	Set   bool // the word had a value: key=value
}

// Parse splits a command line into its parameters, in order. Quotes group
// spaces into a word and are removed, as the kernel removes them.
func Parse(s string) []Param {
	var out []Param
	var word strings.Builder
	inQuote, inWord := false, false
	flush := func() {
		if inWord {
			w := word.String()
			k, v, ok := strings.Cut(w, "=")
			out = append(out, Param{Key: k, Value: v, Set: ok})
		}
		word.Reset()
		inWord = false
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == 0):
			flush()
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return out
}

// Get returns the value of the last occurrence of key (the kernel and most
// inits let the last one win) and whether key is present at all.
func Get(s, key string) (string, bool) {
	v, found := "", false
	for _, p := range Parse(s) {
		if p.Key == key {
			v, found = p.Value, true
		}
	}
	return v, found
}

// String writes p back as one word, quoted when its value holds a space.
func (p Param) String() string {
	w := p.Key
	if p.Set {
		w += "=" + p.Value
	}
	if strings.ContainsAny(w, " \t\n") {
		return `"` + w + `"`
	}
	return w
}
