package grub

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/grub/grubenv"
	"github.com/stagehand-dev/stagehand/meta"
)

// envBlock is a grubenv block as grub-editenv lays it out: the header,
// body, then '#' up to grubenv.Size.
func envBlock(body string) []byte {
	b := []byte(envSignature + body)
	for len(b) < grubenv.Size {
		b = append(b, '#')
	}
	return b
}

// stagehandEnv is a block as the Loader writes it: the three variables in
// the first sector, in this order, then the sector pad; kv are name and
// value in turn, and extra (after the pad) is set with Set.
func stagehandEnv(t *testing.T, extra map[string]string, kv ...string) []byte {
	t.Helper()
	var e grubenv.Env
	for i := 0; i < len(kv); i += 2 {
		if err := e.SetFirst(kv[i], kv[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range extra {
		if err := e.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	b, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// modelCase is one grubenv state the model and the script are run on.
type modelCase struct {
	name     string
	env      []byte // nil: no grubenv
	writable bool
	noLoad   meta.Slot // a slot whose kernel is missing, "" for none
	// want is the model's choice, MODE:WANT:RAN, written down so that a
	// change of the model shows here as well as against grub-emu;
	// written says whether GRUB writes grubenv.
	want    string
	written bool
}

func modelCases(t *testing.T) []modelCase {
	sh := func(kv ...string) []byte { return stagehandEnv(t, map[string]string{VarArmed: "2"}, kv...) }
	return []modelCase{
		{name: "no grubenv", env: nil, writable: true, want: "noslot:a:a"},
		{name: "good a", env: sh(VarSlot, "a", VarTrial, TrialNone, VarTries, "0"), writable: true, want: "good:a:a"},
		{name: "good b", env: sh(VarSlot, "b", VarTrial, TrialNone, VarTries, "0"), writable: true, want: "good:b:b"},
		{name: "trial b 2 tries", env: sh(VarSlot, "a", VarTrial, "b", VarTries, "2"), writable: true, want: "trial:b:b", written: true},
		{name: "trial b 1 try", env: sh(VarSlot, "a", VarTrial, "b", VarTries, "1"), writable: true, want: "trial:b:b", written: true},
		{name: "trial b 9 tries", env: sh(VarSlot, "a", VarTrial, "b", VarTries, "9"), writable: true, want: "trial:b:b", written: true},
		{name: "trial b no tries left", env: sh(VarSlot, "a", VarTrial, "b", VarTries, "0"), writable: true, want: "good:a:a"},
		{name: "trial a of good a", env: sh(VarSlot, "a", VarTrial, "a", VarTries, "1"), writable: true, want: "trial:a:a", written: true},
		{name: "tries 10", env: sh(VarSlot, "b", VarTrial, "a", VarTries, "10"), writable: true, want: "good:b:b"},
		{name: "tries x", env: sh(VarSlot, "b", VarTrial, "a", VarTries, "x"), writable: true, want: "good:b:b"},
		{name: "tries 01", env: sh(VarSlot, "b", VarTrial, "a", VarTries, "01"), writable: true, want: "good:b:b"},
		{name: "trial c", env: sh(VarSlot, "b", VarTrial, "c", VarTries, "2"), writable: true, want: "good:b:b"},
		{name: "slot c, trial b", env: sh(VarSlot, "c", VarTrial, "b", VarTries, "1"), writable: true, want: "trial:b:b", written: true},
		{name: "slot c", env: sh(VarSlot, "c"), writable: true, want: "noslot:a:a"},
		{name: "upper-case slot", env: sh(VarSlot, "B"), writable: true, want: "noslot:a:a"},
		{name: "unwritable trial", env: sh(VarSlot, "b", VarTrial, "a", VarTries, "2"), want: "nosave:b:b"},
		{name: "unwritable no slot trial", env: sh(VarTrial, "b", VarTries, "2"), want: "nosave:a:a"},
		{name: "unwritable good", env: sh(VarSlot, "b", VarTrial, TrialNone, VarTries, "0"), want: "good:b:b"},
		{name: "only the header", env: envBlock(""), writable: true, want: "noslot:a:a"},
		{name: "bad header", env: bytes.Replace(sh(VarSlot, "b"), []byte("Environment"), []byte("Environmant"), 1), writable: true, want: "noslot:a:a"},
		// grub-editenv's layout: no sector pad.
		{name: "grub-editenv trial", env: envBlock("stagehand_slot=b\nstagehand_trial=a\nstagehand_tries=3\n"), writable: true, want: "trial:a:a", written: true},
		{name: "other variables", env: envBlock("saved_entry=1\nstagehand_slot=b\nnext_entry=0\n"), writable: true, want: "good:b:b"},
		// The last of a name wins; save_env writes the first.
		{name: "slot twice", env: envBlock("stagehand_slot=a\nstagehand_slot=b\n"), writable: true, want: "good:b:b"},
		{name: "tries twice", env: envBlock("stagehand_slot=a\nstagehand_trial=b\nstagehand_tries=2\nstagehand_tries=5\n"), writable: true, want: "nosave:a:a", written: true},
		{name: "tries twice, the first empty", env: envBlock("stagehand_slot=a\nstagehand_trial=b\nstagehand_tries=\nstagehand_tries=3\n"), writable: true, want: "nosave:a:a", written: true},
		{name: "tries twice, the first long", env: envBlock("stagehand_slot=a\nstagehand_trial=b\nstagehand_tries=12345\nstagehand_tries=3\n"), writable: true, want: "nosave:a:a", written: true},
		// Lines GRUB reads otherwise than grubenv.Parse does.
		{name: "a blank line eats the next", env: envBlock("\nstagehand_slot=b\n"), writable: true, want: "noslot:a:a"},
		{name: "comment", env: envBlock("#stagehand_slot=b\n"), writable: true, want: "noslot:a:a"},
		{name: "escaped slot", env: envBlock("stagehand_slot=\\b\n"), writable: true, want: "good:b:b"},
		{name: "escaped newline", env: envBlock("x=\\\nstagehand_slot=b\n"), writable: true, want: "noslot:a:a"},
		{name: "carriage return", env: envBlock("stagehand_slot=b\r\n"), writable: true, want: "noslot:a:a"},
		{name: "NUL in a value", env: envBlock("stagehand_slot=b\x00junk\n"), writable: true, want: "good:b:b"},
		{name: "NUL in a name", env: envBlock("stagehand_slot=a\nstagehand_trial=b\nstagehand_tries\x00x=2\n"), writable: true, want: "trial:b:b", written: true},
		{name: "name without a value", env: envBlock("stagehand_slot\nstagehand_slot=b\n"), writable: true, want: "noslot:a:a"},
		// Not grubenv.Size bytes: GRUB reads and writes any size.
		{name: "short block", env: []byte(envSignature + "stagehand_slot=b\nstagehand_trial=a\nstagehand_tries=1\n###"), writable: true, want: "trial:a:a", written: true},
		{name: "header only, no more", env: []byte(envSignature), writable: true, want: "noslot:a:a"},
		{name: "cut short in the count", env: []byte(envSignature + "stagehand_slot=b\nstagehand_trial=a\nstagehand_tries=2"), writable: true, want: "good:b:b"},
		{name: "no newline at the end", env: []byte(envSignature + "stagehand_slot=a\nstagehand_trial=b\nstagehand_tries=2\nx=y"), writable: true, want: "nosave:a:a"},
		{name: "no free space", env: []byte(envSignature + "stagehand_slot=a\nstagehand_trial=b\nstagehand_tries=2\n"), writable: true, want: "trial:b:b", written: true},
		{name: "no room for the appended count", env: []byte(envSignature + "stagehand_slot=a\nstagehand_trial=b\nstagehand_tries\x00=2\n##"), writable: true, want: "nosave:a:a"},
		// The entries: the wanted slot's kernel missing, GRUB falls back.
		{name: "good a, a does not load", env: sh(VarSlot, "a", VarTrial, TrialNone, VarTries, "0"), writable: true, noLoad: "a", want: "good:a:ab"},
		{name: "trial b, b does not load", env: sh(VarSlot, "a", VarTrial, "b", VarTries, "1"), writable: true, noLoad: "b", want: "trial:b:ba", written: true},
	}
}

// TestChoose checks the model against the cases' written-down choices,
// and a state the Loader wrote against what it says of it.
func TestChoose(t *testing.T) {
	for _, tc := range modelCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			c, newEnv := Choose(tc.env, tc.writable)
			if c.Ran != "" {
				t.Errorf("Choose's Ran %q, want none", c.Ran)
			}
			c, ok := c.Run(func(s meta.Slot) bool { return s != tc.noLoad })
			if !ok || c.String() != tc.want || (newEnv != nil) != tc.written {
				t.Errorf("%s, booted %v, grubenv written %v; want %s, written %v", c, ok, newEnv != nil, tc.want, tc.written)
			}
			if newEnv != nil && len(newEnv) != len(tc.env) {
				t.Errorf("grubenv of %d bytes written over %d", len(newEnv), len(tc.env))
			}
		})
	}
	c, _ := Choose(nil, true)
	if c, ok := c.Run(func(meta.Slot) bool { return false }); ok || c.Ran != "ab" {
		t.Errorf("nothing loads: %s, %v", c, ok)
	}
}

// TestChooseLoader: on what the Loader writes, the model boots the trial
// exactly while BootOnce says it is due, counts it as GRUB does (the
// Loader reads the count back), and writes only the first sector.
func TestChooseLoader(t *testing.T) {
	ctx := context.Background()
	fsys := boot.Dir(t.TempDir())
	l := New(fsys, WithCmdline(""))
	if err := l.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []meta.Slot{"a", "b"} {
		if err := l.InstallSlot(ctx, slot, img("k"+string(slot), "i"+string(slot), "v-"+string(slot), 3)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetDefault(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	start := func() Choice {
		t.Helper()
		env, err := fsys.ReadFile(EnvPath)
		if err != nil {
			t.Fatal(err)
		}
		once, due, err := l.BootOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c, newEnv := Choose(env, true)
		switch {
		case due && (c.Mode != ModeTrial || c.Want != once):
			t.Fatalf("BootOnce %s, the model %s", once, c)
		case !due && c.Mode != ModeGood:
			t.Fatalf("no trial due, the model %s", c)
		case newEnv != nil:
			if !bytes.Equal(newEnv[grubenv.SectorSize:], env[grubenv.SectorSize:]) {
				t.Fatal("GRUB wrote grubenv's second sector")
			}
			if err := fsys.OverwriteFile(EnvPath, 0, newEnv); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	if c := start(); c.String() != "good:a:" {
		t.Fatalf("first start: %s", c)
	}
	if err := l.SetBootOnce(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	for i := 3; i > 0; i-- {
		if c := start(); c.String() != "trial:b:" {
			t.Fatalf("trial start: %s", c)
		}
		if s := summary(t, l); s != "a b+"+string(rune('0'+i-1))+"-"+string(rune('0'+4-i)) {
			t.Fatalf("after a trial start: %s", s)
		}
	}
	if c := start(); c.String() != "good:a:" {
		t.Fatalf("tries used up: %s", c)
	}
}

// TestModelEmu runs each case's grubenv under grub-emu with the script
// and slots the Loader writes (see TestEmu) and checks that GRUB chose,
// booted and wrote what the model says, byte for byte.
func TestModelEmu(t *testing.T) {
	e := newEmu(t)
	ctx := context.Background()
	// The ESP's files as the Loader writes them, grubenv aside.
	dir := t.TempDir()
	l := New(boot.Dir(dir), WithCmdline(""))
	if err := l.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []meta.Slot{"a", "b"} {
		if err := l.InstallSlot(ctx, slot, img("kernel "+string(slot), "initramfs "+string(slot), "v-"+string(slot), 2)); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := l.Slots(ctx)
	if err != nil || len(entries) != 2 {
		t.Fatalf("Slots: %+v, %v", entries, err)
	}
	files := map[string][]byte{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == EnvPath {
			return nil
		}
		b, err := os.ReadFile(p)
		files["/"+rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range modelCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, newEnv := Choose(tc.env, tc.writable)
			c, _ = c.Run(func(s meta.Slot) bool { return s != tc.noLoad })
			onESP := files
			if tc.noLoad != "" {
				onESP = map[string][]byte{}
				for k, v := range files {
					onESP[k] = v
				}
				for _, e := range entries {
					if e.Slot == tc.noLoad {
						delete(onESP, e.Kernel)
					}
				}
			}
			img, _ := newEmuDisk(t, onESP, tc.env, !tc.writable)
			got := e.run(t, img, !tc.writable, false)
			if got.mode != c.Mode || got.want != string(c.Want) {
				t.Fatalf("grub-emu chose slot %s (%s), the model %s (%s); grub-emu printed:\n%s", got.want, got.mode, c.Want, c.Mode, got.out)
			}
			var param string
			for _, a := range got.args {
				if v, ok := strings.CutPrefix(a, ChoiceParam+"="); ok {
					param = v
				}
			}
			if param != c.String() {
				t.Errorf("grub-emu passed %s=%s, the model %s; grub-emu printed:\n%s", ChoiceParam, param, c, got.out)
			}
			after, err := readEmuEnv(t, img, "/"+EnvPath, !tc.writable)
			want := tc.env
			if newEnv != nil {
				want = newEnv
			}
			switch {
			case tc.env == nil && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("grubenv after: %v, want none", err)
			case tc.env == nil:
			case err != nil:
				t.Fatal(err)
			case !bytes.Equal(after, want):
				t.Errorf("grubenv after grub-emu:\n%q\nthe model's:\n%q", after, want)
			}
		})
	}
}
