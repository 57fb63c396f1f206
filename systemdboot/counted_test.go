package systemdboot

import (
	"context"
	"path"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/meta"
)

func TestNextSortKey(t *testing.T) {
	for _, tc := range []struct{ other, want string }{
		{"", "stagehand-999999999"},
		{"stagehand-999999999", "stagehand-999999998"},
		{"stagehand-000000010", "stagehand-000000009"},
		{"stagehand-000000000", "stagehand-999999999"}, // a billion installs later: starts again
		{"stagehand-x", "stagehand-999999999"},
		{"debian", "stagehand-999999999"},
		{"stagehand-9999999999", "stagehand-999999999"},
	} {
		if got := nextSortKey(tc.other); got != tc.want {
			t.Errorf("nextSortKey(%q) = %q, want %q", tc.other, got, tc.want)
		}
	}
}

// TestCountedDefault: a trial armed without boot-once is the default while
// its counted entry has tries left, and the other slot once systemd-boot
// has counted them all; the slot installed last is listed first, so it
// works in either direction.
func TestCountedDefault(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	sb := New(esp)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	def := func(want meta.Slot) {
		t.Helper()
		got, err := sb.Default(ctx)
		if err != nil || got != want {
			t.Fatalf("Default = %q, %v; want %q", got, err, want)
		}
		on, err := sb.CountedDefault(ctx)
		if err != nil || !on {
			t.Fatalf("CountedDefault = %v, %v", on, err)
		}
	}
	must(sb.InstallSlot(ctx, meta.SlotA, image("k1", "i1", 0)))
	must(sb.SetDefault(ctx, meta.SlotA))
	if on, err := sb.CountedDefault(ctx); err != nil || on {
		t.Fatalf("CountedDefault after SetDefault = %v, %v", on, err)
	}
	if err := sb.SetCountedDefault(ctx, meta.SlotA); err == nil || !strings.Contains(err.Error(), "does not count tries") {
		t.Fatalf("SetCountedDefault of an uncounted entry: %v", err)
	}
	must(sb.InstallSlot(ctx, meta.SlotB, image("k2", "i2", 2)))
	must(sb.SetCountedDefault(ctx, meta.SlotB))
	def(meta.SlotB)
	// systemd-boot counts the firmware starts of b down.
	must(esp.Rename(path.Join(entriesDir, "stagehand-b+2.conf"), path.Join(entriesDir, "stagehand-b+1-1.conf")))
	def(meta.SlotB)
	must(esp.Rename(path.Join(entriesDir, "stagehand-b+1-1.conf"), path.Join(entriesDir, "stagehand-b+0-2.conf")))
	def(meta.SlotA) // b has none left: listed last
	if err := sb.SetCountedDefault(ctx, meta.SlotB); err == nil {
		t.Fatal("SetCountedDefault of an entry with no tries left succeeded")
	}

	// Confirmed: b blessed and the default; the next trial is in a, whose
	// entry is listed first because it was installed last.
	must(sb.Bless(ctx, meta.SlotB))
	must(sb.SetDefault(ctx, meta.SlotB))
	must(sb.InstallSlot(ctx, meta.SlotA, image("k3", "i3", 2)))
	must(sb.SetCountedDefault(ctx, meta.SlotA))
	def(meta.SlotA)
	must(esp.Rename(path.Join(entriesDir, "stagehand-a+2.conf"), path.Join(entriesDir, "stagehand-a+0-2.conf")))
	def(meta.SlotB)

	// Entries stagehand did not order (no sort-key, as before it set
	// one): systemd-boot lists b before a, so a's trial cannot be armed so.
	must(esp.WriteFile(path.Join(entriesDir, "stagehand-a+2.conf"), strings.NewReader("linux /stagehand/a/vmlinuz\n")))
	must(esp.Remove(path.Join(entriesDir, "stagehand-a+0-2.conf")))
	must(esp.WriteFile(path.Join(entriesDir, "stagehand-b.conf"), strings.NewReader("linux /stagehand/b/vmlinuz\n")))
	if err := sb.SetCountedDefault(ctx, meta.SlotA); err == nil || !strings.Contains(err.Error(), "lists slot b's entry first") {
		t.Fatalf("SetCountedDefault below an entry listed first: %v", err)
	}
}

func TestMenuOrder(t *testing.T) {
	a := boot.SlotEntry{Slot: meta.SlotA}
	b := boot.SlotEntry{Slot: meta.SlotB}
	with := func(e boot.SlotEntry, f func(*boot.SlotEntry)) boot.SlotEntry { f(&e); return e }
	for _, tc := range []struct {
		name string
		x, y boot.SlotEntry
		want meta.Slot
		err  string
	}{
		{"no sort-keys: IDs in reverse", a, b, meta.SlotB, ""},
		{"sort-key first", with(a, func(e *boot.SlotEntry) { e.SortKey = "stagehand-1" }), b, meta.SlotA, ""},
		{"sort-keys in order", with(a, func(e *boot.SlotEntry) { e.SortKey = "stagehand-2" }), with(b, func(e *boot.SlotEntry) { e.SortKey = "stagehand-3" }), meta.SlotA, ""},
		{"no tries left last", with(a, func(e *boot.SlotEntry) { e.SortKey, e.Counting = "stagehand-1", true }), b, meta.SlotB, ""},
		{"tries left", with(a, func(e *boot.SlotEntry) { e.SortKey, e.Counting, e.Left = "stagehand-1", true, 1 }), b, meta.SlotA, ""},
		{"same sort-key", with(a, func(e *boot.SlotEntry) { e.SortKey = "k" }), with(b, func(e *boot.SlotEntry) { e.SortKey = "k" }), "", "same sort-key"},
		{"UKI", with(a, func(e *boot.SlotEntry) { e.UKI = true }), b, "", "unified kernel image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, swap := range []bool{false, true} {
				x, y := tc.x, tc.y
				if swap {
					x, y = y, x
				}
				got, err := menuOrder(x, y)
				if tc.err != "" {
					if err == nil || !strings.Contains(err.Error(), tc.err) {
						t.Fatalf("menuOrder = %v, %v; want %q", got.Slot, err, tc.err)
					}
					continue
				}
				if err != nil || got.Slot != tc.want {
					t.Fatalf("menuOrder = %v, %v; want %v", got.Slot, err, tc.want)
				}
			}
		})
	}
}
