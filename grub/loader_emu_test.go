package grub

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
)

// TestLoaderEmu boots, under grub-emu (see TestEmu), the grub.cfg and
// grubenv the Loader wrote to a disk image's ESP: a trial armed by
// SetBootOnce boots and is counted by GRUB, the kernel is told so, and the
// Loader, given the command line GRUB passed, reads it all back; a try
// counted by CountKexec is one GRUB does not make; once the tries are used
// up, or the trial blessed, GRUB boots the default.
func TestLoaderEmu(t *testing.T) {
	e := newEmu(t)
	ctx := context.Background()
	image := filepath.Join(t.TempDir(), "disk.img")
	layout := disk.Layout{ESPSize: disk.MinESPSize, StageSize: 1 << 20}
	layout.Size = layout.MinSize()
	d, err := disk.Create(ctx, image, layout)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := fat.Format(r, r.Size, boot.ESPLabel)
	if err != nil {
		t.Fatal(err)
	}
	partuuid := strings.ToLower(r.GUID)
	l := New(esp, WithCmdline(""))
	if err := l.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		slot    meta.Slot
		cmdline string
		tries   int
	}{{"a", "console=ttyS0", 0}, {"b", "console=ttyS0 quiet", 3}} {
		i := img(string(s.slot)+"-kernel", string(s.slot)+"-initramfs", "v-"+string(s.slot), s.tries)
		i.Cmdline = s.cmdline
		if err := l.InstallSlot(ctx, s.slot, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetDefault(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := l.SetBootOnce(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// withLoader opens the disk afresh, as the booted kernel's prestage
	// would, with the kernel command line GRUB passed.
	withLoader := func(args []string, fn func(l *Loader)) {
		t.Helper()
		d, err := disk.Open(image, true)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r, err := d.Find(disk.LabelESP)
		if err != nil {
			t.Fatal(err)
		}
		esp, err := fat.Open(r, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		fn(New(esp, WithCmdline(strings.Join(args[1:], " "))))
	}
	for i, run := range []struct {
		choice string // what the script passes
		slots  string // summary of Slots after the boot
		once   meta.Slot
		plain  bool            // BootedPlain of the slot booted
		then   func(l *Loader) // before the next boot
	}{
		{"trial:b:b", "a b+2-1", "b", false, nil},
		{"trial:b:b", "a b+1-2", "b", false, func(l *Loader) {
			// prestage kexecs slot b: the try GRUB would have counted.
			if err := l.CountKexec(ctx, "b"); err != nil {
				t.Fatal(err)
			}
			if s := summary(t, l); s != "a b+0-3" {
				t.Errorf("after CountKexec: %q", s)
			}
		}},
		{"good:a:a", "a b+0-3", "", true, func(l *Loader) {
			// Armed again, then blessed: GRUB boots the default.
			if err := l.SetBootOnce(ctx, "b"); err != nil {
				t.Fatal(err)
			}
			if s := summary(t, l); s != "a b+3-3" {
				t.Errorf("after SetBootOnce: %q", s)
			}
			if err := l.Bless(ctx, "b"); err != nil {
				t.Fatal(err)
			}
			if err := l.SetDefault(ctx, "b"); err != nil {
				t.Fatal(err)
			}
		}},
		{"good:b:b", "a b", "", true, nil},
	} {
		got := e.run(t, image, false, false)
		mode, rest, _ := strings.Cut(run.choice, ":")
		want, _, _ := strings.Cut(rest, ":")
		if got.want != want || got.mode != mode {
			t.Fatalf("boot %d: the script chose slot %s (%s), want %s (%s); grub-emu printed:\n%s", i+1, got.want, got.mode, want, mode, got.out)
		}
		slot := meta.Slot(run.choice[len(run.choice)-1:])
		withLoader(got.args, func(l *Loader) {
			entries, err := l.Slots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// What GRUB passed is the slot's entry: its paths and its
			// command line, the boot record included (a kexec with it
			// tells the same).
			var entry boot.SlotEntry
			for _, e := range entries {
				if e.Slot == slot {
					entry = e
				}
			}
			if d := cmp.Diff(append([]string{entry.Kernel}, strings.Fields(entry.Cmdline)...), got.args); d != "" {
				t.Errorf("boot %d: linux's arguments differ from Slots' entry (-Slots, +GRUB):\n%s", i+1, d)
			}
			// The boot record, then the partition GRUB ran from: the
			// ESP.
			if tail := " " + ChoiceParam + "=" + run.choice + " " + PartUUIDParam + "=" + partuuid; !strings.HasSuffix(entry.Cmdline, tail) {
				t.Errorf("boot %d: command line %q, want it to end in %q", i+1, entry.Cmdline, tail)
			}
			if s := summary(t, l); s != run.slots {
				t.Errorf("boot %d: Slots %q, want %q", i+1, s, run.slots)
			}
			if once, _, err := l.BootOnce(ctx); err != nil || once != run.once {
				t.Errorf("boot %d: BootOnce %q, %v; want %q", i+1, once, err, run.once)
			}
			if booted, known, err := l.BootedSlot(ctx); err != nil || !known || booted != slot {
				t.Errorf("boot %d: BootedSlot %q, %v, %v; want %q", i+1, booted, known, err, slot)
			}
			if plain, err := l.BootedPlain(ctx, slot); err != nil || plain != run.plain {
				t.Errorf("boot %d: BootedPlain %v, %v; want %v", i+1, plain, err, run.plain)
			}
			if run.then != nil {
				run.then(l)
			}
		})
	}
}
