package systemdboot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/meta"
)

func entries(t *testing.T, esp boot.FS) []string {
	t.Helper()
	names, err := esp.ReadDir(entriesDir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func image(kernel, initramfs string, tries int) boot.Image {
	return boot.Image{Kernel: strings.NewReader(kernel), Initramfs: strings.NewReader(initramfs), Cmdline: "console=ttyS0", Version: kernel, Tries: tries}
}

// TestCounting: a counted install, the loader's renames, Bless.
func TestCounting(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	sb := New(esp)
	if err := sb.InstallSlot(ctx, meta.SlotA, image("k1", "i1", 0)); err != nil {
		t.Fatal(err)
	}
	if err := sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", 3)); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b+3.conf"}, entries(t, esp)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
	for _, tries := range []int{-1, maxTries + 1} {
		if err := sb.InstallSlot(ctx, meta.SlotB, image("k", "i", tries)); err == nil || !strings.Contains(err.Error(), "tries") {
			t.Errorf("InstallSlot with %d tries: %v", tries, err)
		}
	}
	// Reinstalling with other tries leaves one entry file, whatever the
	// counter state was.
	for _, tc := range []struct {
		loader string // the name the loader renamed the entry to, "" for none
		tries  int
		want   string
	}{
		{"stagehand-b+2-1.conf", 1, "stagehand-b+1.conf"},
		{"stagehand-b+0-1.conf", 0, "stagehand-b.conf"},
		{"", 2, "stagehand-b+2.conf"},
	} {
		if tc.loader != "" {
			cur := entries(t, esp)[1]
			if err := esp.Rename(path.Join(entriesDir, cur), path.Join(entriesDir, tc.loader)); err != nil {
				t.Fatal(err)
			}
		}
		if err := sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", tc.tries)); err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff([]string{"stagehand-a.conf", tc.want}, entries(t, esp)); d != "" {
			t.Errorf("after %s and reinstalling with %d tries (-want, +got):\n%s", tc.loader, tc.tries, d)
		}
	}
	// The loader counts a try; Slots says so.
	if err := esp.Rename(path.Join(entriesDir, "stagehand-b+2.conf"), path.Join(entriesDir, "stagehand-b+1-1.conf")); err != nil {
		t.Fatal(err)
	}
	slots, err := sb.Slots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != 2 || slots[0].Counting || !slots[1].Counting || slots[1].Left != 1 || slots[1].Done != 1 ||
		slots[1].Description != "loader/entries/stagehand-b+1-1.conf" {
		t.Errorf("Slots = %+v", slots)
	}
	// SetDefault works on the counted entry.
	if err := sb.SetDefault(ctx, meta.SlotB); err != nil {
		t.Fatal(err)
	}
	if def, err := sb.Default(ctx); err != nil || def != meta.SlotB {
		t.Errorf("Default = %q, %v", def, err)
	}
	// Bless, twice; and on the uncounted slot a.
	for i := 0; i < 2; i++ {
		if err := sb.Bless(ctx, meta.SlotB); err != nil {
			t.Fatalf("Bless %d: %v", i, err)
		}
		if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b.conf"}, entries(t, esp)); d != "" {
			t.Errorf("after Bless %d (-want, +got):\n%s", i, d)
		}
	}
	if err := sb.Bless(ctx, meta.SlotA); err != nil {
		t.Error(err)
	}
	if def, err := sb.Default(ctx); err != nil || def != meta.SlotB {
		t.Errorf("Default after Bless = %q, %v", def, err)
	}
	b, _ := esp.ReadFile(path.Join(entriesDir, "stagehand-b.conf"))
	if e, err := ParseEntry(b); err != nil || e.Linux != "/stagehand/b/vmlinuz" || e.Version != "k2" {
		t.Errorf("blessed entry: %+v, %v", e, err)
	}
	// A bad entry (+0) is blessed too: that is the caller's decision.
	if err := sb.InstallSlot(ctx, meta.SlotA, image("k1", "i1", 1)); err != nil {
		t.Fatal(err)
	}
	esp.Rename(path.Join(entriesDir, "stagehand-a+1.conf"), path.Join(entriesDir, "stagehand-a+0-1.conf"))
	if err := sb.Bless(ctx, meta.SlotA); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"stagehand-a.conf", "stagehand-b.conf"}, entries(t, esp)); d != "" {
		t.Errorf("after blessing a bad entry (-want, +got):\n%s", d)
	}

	empty := New(boot.Dir(t.TempDir()))
	if err := empty.Bless(ctx, meta.SlotB); !errors.Is(err, boot.ErrSlotEmpty) {
		t.Errorf("Bless of an empty slot: %v, want ErrSlotEmpty", err)
	}
	if err := sb.Bless(ctx, "c"); err == nil {
		t.Error("Bless(c) succeeded")
	}
	// Two entry files for one slot: refused, not guessed.
	esp.WriteFile(path.Join(entriesDir, "stagehand-b+1.conf"), strings.NewReader("linux /x\n"))
	if err := sb.Bless(ctx, meta.SlotB); err == nil || !strings.Contains(err.Error(), "2 loader entries") {
		t.Errorf("Bless with two entries: %v", err)
	}
}

// TestDefaultMatch: loader.conf's default is matched as systemd-boot
// matches it, by 252's rule (the file name) and by later ones' (the file
// name without the counter); a pattern on which they disagree is refused.
func TestDefaultMatch(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	sb := New(esp)
	sb.InstallSlot(ctx, meta.SlotA, image("k1", "i1", 0))
	sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", 1))
	esp.Rename(path.Join(entriesDir, "stagehand-b+1.conf"), path.Join(entriesDir, "stagehand-b+0-1.conf"))
	for _, tc := range []struct {
		def  string
		want meta.Slot
		err  string
	}{
		{EntryPattern(meta.SlotA), meta.SlotA, ""},
		{EntryPattern(meta.SlotB), meta.SlotB, ""},
		{"stagehand-a.conf", meta.SlotA, ""},
		{"STAGEHAND-A.CONF", meta.SlotA, ""},
		{"stagehand-a*", meta.SlotA, ""},
		{"stagehand-b.conf", "", "some systemd-boot versions only"},
		{"stagehand-b+0-1.conf", "", "some systemd-boot versions only"},
		{"stagehand-b", "", "matches no stagehand slot"},
		{"debian-*.conf", "", "matches no stagehand slot"},
		{CountedDefaultPattern, meta.SlotA, ""}, // b has no tries left: listed last
		{"stagehand-?*", "", "both slots"},
		{"stagehand-[", "", "not a glob pattern"},
	} {
		t.Run(tc.def, func(t *testing.T) {
			esp.WriteFile(loaderConf, strings.NewReader("default "+tc.def+"\n"))
			got, err := sb.Default(ctx)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Default = %q, %v; want %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Default = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// The pattern names nothing else of ours.
	for _, name := range []string{"stagehand-ab.conf", "stagehand-a-old.conf", "stagehand-b.conf", "stagehand-b+1.conf"} {
		if ok, _ := path.Match(EntryPattern(meta.SlotA), name); ok {
			t.Errorf("EntryPattern(a) matches %s", name)
		}
	}
	esp.WriteFile(loaderConf, strings.NewReader("timeout 0\n"))
	if _, err := sb.Default(ctx); err == nil || !strings.Contains(err.Error(), "names no default") {
		t.Errorf("Default without one: %v", err)
	}
}

func TestBootOnce(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	vars := efivar.Dir(t.TempDir())

	bare := New(esp)
	if err := bare.SetBootOnce(ctx, meta.SlotA); !errors.Is(err, boot.ErrNoEFIVars) {
		t.Errorf("SetBootOnce without variables: %v", err)
	}
	if err := bare.ClearBootOnce(ctx); !errors.Is(err, boot.ErrNoEFIVars) {
		t.Errorf("ClearBootOnce without variables: %v", err)
	}
	if _, _, err := bare.BootOnce(ctx); !errors.Is(err, boot.ErrNoEFIVars) {
		t.Errorf("BootOnce without variables: %v", err)
	}

	sb := New(esp, WithEFIVars(vars))
	sb.InstallSlot(ctx, meta.SlotA, image("k1", "i1", 0))
	if slot, ok, err := sb.BootOnce(ctx); err != nil || ok {
		t.Errorf("BootOnce on fresh variables = %q, %v, %v", slot, ok, err)
	}
	if err := sb.SetBootOnce(ctx, meta.SlotB); !errors.Is(err, boot.ErrSlotEmpty) {
		t.Errorf("SetBootOnce of an empty slot: %v, want ErrSlotEmpty", err)
	}
	if err := sb.SetBootOnce(ctx, "c"); err == nil {
		t.Error("SetBootOnce(c) succeeded")
	}
	if err := sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", 1)); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetBootOnce(ctx, meta.SlotB); err != nil {
		t.Fatal(err)
	}
	// The variable as systemd-boot reads it: attributes NV|BS|RT, the
	// pattern in UTF-16LE with a NUL.
	raw, err := os.ReadFile(filepath.Join(string(vars), "LoaderEntryOneShot-"+efivar.LoaderVendor))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{7, 0, 0, 0}
	for _, c := range "stagehand-b[.+]*" {
		want = append(want, byte(c), 0)
	}
	want = append(want, 0, 0)
	if !bytes.Equal(raw, want) {
		t.Errorf("LoaderEntryOneShot holds % x\nwant % x", raw, want)
	}
	for _, loader := range []string{"", "stagehand-b+0-1.conf"} { // before and after the loader counts the try
		if loader != "" {
			esp.Rename(path.Join(entriesDir, "stagehand-b+1.conf"), path.Join(entriesDir, loader))
		}
		if slot, ok, err := sb.BootOnce(ctx); err != nil || !ok || slot != meta.SlotB {
			t.Errorf("BootOnce (%s) = %q, %v, %v; want b", loader, slot, ok, err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := sb.ClearBootOnce(ctx); err != nil {
			t.Fatalf("ClearBootOnce %d: %v", i, err)
		}
		if slot, ok, err := sb.BootOnce(ctx); err != nil || ok {
			t.Errorf("BootOnce after clearing = %q, %v, %v", slot, ok, err)
		}
	}
	// Set by someone else: a name that is no slot of ours is reported.
	efivar.SetString(vars, OneShotVar, efivar.LoaderVendor, 7, "debian-6.1.conf")
	if _, _, err := sb.BootOnce(ctx); err == nil || !strings.Contains(err.Error(), "debian-6.1.conf") {
		t.Errorf("BootOnce of another entry: %v", err)
	}
	efivar.SetString(vars, OneShotVar, efivar.LoaderVendor, 7, "stagehand-a.conf")
	if slot, ok, err := sb.BootOnce(ctx); err != nil || !ok || slot != meta.SlotA {
		t.Errorf("BootOnce of stagehand-a.conf = %q, %v, %v", slot, ok, err)
	}
}

func TestReadSlot(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	sb := New(esp)
	if _, _, _, err := sb.ReadSlot(ctx, meta.SlotA); !errors.Is(err, boot.ErrSlotEmpty) {
		t.Errorf("ReadSlot of an empty slot: %v", err)
	}
	kernel := bytes.Repeat([]byte("kernel"), 100_000)
	img := boot.Image{Kernel: bytes.NewReader(kernel), Initramfs: strings.NewReader("initramfs"), Cmdline: "console=ttyS0", Version: "v2", Tries: 2}
	if err := sb.InstallSlot(ctx, meta.SlotB, img); err != nil {
		t.Fatal(err)
	}
	k, i, e, err := sb.ReadSlot(ctx, meta.SlotB)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k, kernel) || string(i) != "initramfs" {
		t.Errorf("ReadSlot: kernel %d bytes, initramfs %q", len(k), i)
	}
	want := boot.SlotEntry{Slot: meta.SlotB, Version: "v2", Cmdline: "stagehand.slot=b console=ttyS0", Kernel: "/stagehand/b/vmlinuz",
		Initrd: "/stagehand/b/initramfs", Counting: true, Left: 2, Description: "loader/entries/stagehand-b+2.conf", SortKey: "stagehand-999999999"}
	if d := cmp.Diff(want, e); d != "" {
		t.Errorf("entry (-want, +got):\n%s", d)
	}
	// Several initrds (as systemd writes for microcode) come concatenated,
	// as the loader hands them to the kernel; backslashes are paths too.
	esp.WriteFile("ucode", strings.NewReader("ucode+"))
	esp.WriteFile(path.Join(entriesDir, "stagehand-a.conf"), strings.NewReader("linux \\stagehand\\b\\vmlinuz\ninitrd /ucode\ninitrd /stagehand/b/initramfs\n"))
	if k, i, _, err := sb.ReadSlot(ctx, meta.SlotA); err != nil || !bytes.Equal(k, kernel) || string(i) != "ucode+initramfs" {
		t.Errorf("ReadSlot(a) = kernel %d bytes, initramfs %q, %v", len(k), i, err)
	}
	esp.Remove("stagehand/b/initramfs")
	if _, _, _, err := sb.ReadSlot(ctx, meta.SlotB); err == nil || !strings.Contains(err.Error(), "initramfs") {
		t.Errorf("ReadSlot with the initramfs gone: %v", err)
	}
}

// racingFS is an ESP where another program (systemd-bless-boot) renames
// the counted entry just before Bless does (InstallSlot's rename of the
// entry it wrote is left alone).
type racingFS struct {
	boot.FS
	raced bool
}

func (r *racingFS) Rename(from, to string) error {
	if !r.raced && strings.Contains(path.Base(from), "+") {
		r.raced = true
		if err := r.FS.Rename(from, to); err != nil {
			return err
		}
	}
	return r.FS.Rename(from, to)
}

// TestBlessRace: systemd-bless-boot renamed the entry between Bless's look
// and its rename; the slot is blessed, and Bless says so.
func TestBlessRace(t *testing.T) {
	ctx := context.Background()
	esp := &racingFS{FS: boot.Dir(t.TempDir())}
	sb := New(esp)
	if err := sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", 2)); err != nil {
		t.Fatal(err)
	}
	if err := sb.Bless(ctx, meta.SlotB); err != nil {
		t.Fatalf("Bless after systemd-bless-boot renamed the entry: %v", err)
	}
	if !esp.raced {
		t.Fatal("the race did not happen")
	}
	if d := cmp.Diff([]string{"stagehand-b.conf"}, entries(t, esp.FS)); d != "" {
		t.Errorf("entries (-want, +got):\n%s", d)
	}
}
