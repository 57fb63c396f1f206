package main

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
)

func newMetaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "meta",
		Short: "Read and change the META store (Talos ADV format) directly",
		Long: `Raw access to META, the 1 MiB partition that carries the upgrade state.

Tags are given as numbers (0x07, 7) or by name. Talos's tags keep Talos's
meaning (0x06 talos-upgrade, 0x07 talos-staged-image-ref, 0x08
talos-staged-install-options); stagehand's own start at 0x40 (generation,
staged, slots, transitions). Values print as text when printable, else as hex.`,
	}
	cmd.AddCommand(newMetaListCmd(), newMetaGetCmd(), newMetaSetCmd(), newMetaDeleteCmd(), newMetaFormatCmd())
	return cli.GroupOnly(cmd)
}

// parseTag reads a tag as a number (0x07, 7) or a name (talos-staged-image-ref).
func parseTag(s string) (meta.Tag, error) {
	if t, ok := meta.TagByName(s); ok {
		return t, nil
	}
	n, err := strconv.ParseUint(s, 0, 8)
	if err != nil || n == 0 {
		var names []string
		for t := range 256 {
			if name := meta.TagName(meta.Tag(t)); name != "" {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		return 0, cli.Usage("tag %q is neither a number from 0x01 to 0xff nor a known name (%s)", s, strings.Join(names, ", "))
	}
	return meta.Tag(n), nil
}

// printable tells whether v reads well as text.
func printable(v []byte) bool {
	if !utf8.Valid(v) {
		return false
	}
	for _, r := range string(v) {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' {
			return false
		}
	}
	return true
}

type jsonEntry struct {
	Tag  uint8   `json:"tag"`
	Hex  string  `json:"tag_hex"`
	Name string  `json:"name,omitempty"`
	Size int     `json:"size"`
	Text *string `json:"text,omitempty"`
	Data string  `json:"hex"`
}

func toJSONEntry(e meta.Entry) jsonEntry {
	j := jsonEntry{Tag: uint8(e.Tag), Hex: fmt.Sprintf("0x%02x", e.Tag), Name: meta.TagName(e.Tag), Size: len(e.Value), Data: hex.EncodeToString(e.Value)}
	if printable(e.Value) {
		s := string(e.Value)
		j.Text = &s
	}
	return j
}

// readMETA loads META without writing, says on stderr when a copy is
// damaged, and releases the disk: the store keeps what it read.
func readMETA(cmd *cobra.Command, diskPath func() (string, error)) (*meta.Store, error) {
	path, err := diskPath()
	if err != nil {
		return nil, err
	}
	s, d, err := disk.OpenMETA(cmd.Context(), path, false)
	if err != nil {
		return nil, err
	}
	d.Close()
	if dmg := s.Damaged(); dmg != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: META on %s: %s; the next write repairs it\n", s.Name(), dmg)
	}
	return s, nil
}

func newMetaListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every tag in META",
		Args:  cli.ExactArgs(0, "no arguments"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		s, err := readMETA(cmd, diskPath)
		if err != nil {
			return err
		}
		entries := s.Block().Entries()
		out := cmd.OutOrStdout()
		if asJSON {
			type copyJSON struct {
				Valid      bool   `json:"valid"`
				Blank      bool   `json:"blank,omitempty"`
				Generation uint64 `json:"generation"`
				Error      string `json:"error,omitempty"`
			}
			v := struct {
				Device     string      `json:"device"`
				Generation uint64      `json:"generation"`
				Used       int         `json:"used"`
				Capacity   int         `json:"capacity"`
				Copies     []copyJSON  `json:"copies"`
				Entries    []jsonEntry `json:"entries"`
			}{Device: s.Name(), Generation: s.Generation(), Used: s.Block().Used(), Capacity: meta.Capacity, Entries: []jsonEntry{}}
			for _, c := range s.Copies() {
				cj := copyJSON{Valid: c.Valid, Blank: c.Blank, Generation: c.Generation}
				if c.Err != nil {
					cj.Error = c.Err.Error()
				}
				v.Copies = append(v.Copies, cj)
			}
			for _, e := range entries {
				v.Entries = append(v.Entries, toJSONEntry(e))
			}
			return cli.WriteJSON(out, v)
		}
		if len(entries) == 0 {
			fmt.Fprintf(out, "META on %s is empty\n", s.Name())
			return nil
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TAG\tNAME\tSIZE\tVALUE")
		for _, e := range entries {
			fmt.Fprintf(tw, "0x%02x\t%s\t%d\t%s\n", e.Tag, meta.TagName(e.Tag), len(e.Value), oneLine(e.Value, 100))
		}
		return tw.Flush()
	}
	return cmd
}

// oneLine renders a value for a table: text, or hex prefixed "hex:", cut to max runes.
func oneLine(v []byte, max int) string {
	s := "hex:" + hex.EncodeToString(v)
	if printable(v) {
		s = strings.NewReplacer("\n", `\n`, "\t", `\t`).Replace(string(v))
	}
	if r := []rune(s); len(r) > max {
		s = string(r[:max-1]) + "…"
	}
	return s
}

func newMetaGetCmd() *cobra.Command {
	var asJSON, asHex bool
	cmd := &cobra.Command{
		Use:   "get TAG",
		Short: "Print the value of one tag",
		Long:  "Print the value of one tag: as text when it is printable, else as hex (or always as hex with --hex).",
		Args:  cli.ExactArgs(1, "one TAG"),
	}
	diskPath := cli.AddDiskFlag(cmd, nil)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&asHex, "hex", false, "print the value as hex")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		tag, err := parseTag(args[0])
		if err != nil {
			return err
		}
		s, err := readMETA(cmd, diskPath)
		if err != nil {
			return err
		}
		v, ok := s.Block().Get(tag)
		if !ok {
			return fmt.Errorf("tag 0x%02x is not set in META on %s", tag, s.Name())
		}
		out := cmd.OutOrStdout()
		switch {
		case asJSON:
			return cli.WriteJSON(out, toJSONEntry(meta.Entry{Tag: tag, Value: v}))
		case asHex || !printable(v):
			_, err = fmt.Fprintln(out, hex.EncodeToString(v))
		default:
			_, err = fmt.Fprintln(out, string(v))
		}
		return err
	}
	return cmd
}
