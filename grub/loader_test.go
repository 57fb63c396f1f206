package grub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/fat/fattest"
	"github.com/stagehand-dev/stagehand/grub/grubenv"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
	"github.com/stagehand-dev/stagehand/meta"
)

// testFS is a boot file system a test runs on, with what it holds.
type testFS struct {
	fsys boot.FS
	// snapshot returns everything the file system holds: the image's
	// bytes for a FAT, the files, their contents and inodes for a Dir.
	snapshot func() []byte
	// envAt tells where grubenv lies, to check it stays there: the offset
	// of its bytes in the image for a FAT, its inode for a Dir.
	envAt func() string
	check func() // fsck.fat for a FAT
}

// fsKinds are the file systems the backend writes: an unmounted FAT
// (fat.Volume, made by fat.Format on a file) and a mounted directory.
var fsKinds = []struct {
	name string
	make func(t *testing.T) testFS
}{
	{"fat", func(t *testing.T) testFS {
		img := filepath.Join(t.TempDir(), "esp.img")
		vol := grubtest.FormatFAT(t, img, grubtest.FATSize)
		read := func() []byte {
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		return testFS{
			fsys:     vol,
			snapshot: read,
			envAt: func() string {
				env, err := vol.ReadFile(EnvPath)
				if err != nil {
					return err.Error()
				}
				b := read()
				if n := bytes.Count(b, env); n != 1 {
					// Not one run of the image: the test needs one.
					return fmt.Sprintf("grubenv's bytes found %d times in the image", n)
				}
				return fmt.Sprintf("at %d", bytes.Index(b, env))
			},
			check: func() {
				// What the test wrote itself through the volume too.
				if err := vol.Sync(); err != nil {
					t.Fatal(err)
				}
				out := fattest.Fsck(t, img)
				if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
					t.Errorf("fsck.fat -n said more than its banner and summary:\n%s", out)
				}
			},
		}
	}},
	{"dir", func(t *testing.T) testFS {
		dir := t.TempDir()
		return testFS{
			fsys: boot.Dir(dir),
			snapshot: func() []byte {
				var b bytes.Buffer
				err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
					if err != nil || d.IsDir() {
						return err
					}
					c, err := os.ReadFile(p)
					fi, _ := d.Info()
					fmt.Fprintf(&b, "%s %d %d\n%s\n", p, fi.Sys().(*syscall.Stat_t).Ino, len(c), c)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				return b.Bytes()
			},
			envAt: func() string {
				fi, err := os.Stat(filepath.Join(dir, EnvPath))
				if err != nil {
					return err.Error()
				}
				return fmt.Sprintf("inode %d, %d bytes", fi.Sys().(*syscall.Stat_t).Ino, fi.Size())
			},
			check: func() {},
		}
	}},
}

// recordFS records the writes to grubenv other than OverwriteFile (env:
// there must be none once it exists), and every change (ops).
type recordFS struct {
	boot.FS
	env, ops []string
}

func (r *recordFS) note(op, name string) {
	if strings.HasPrefix(name, EnvPath) {
		r.env = append(r.env, op+" "+name)
	}
	r.ops = append(r.ops, op+" "+name)
}

func (r *recordFS) Sync() error {
	r.ops = append(r.ops, "Sync")
	return r.FS.Sync()
}

func (r *recordFS) WriteFile(name string, rd io.Reader) error {
	r.note("WriteFile", name)
	return r.FS.WriteFile(name, rd)
}

func (r *recordFS) Rename(from, to string) error {
	r.note("Rename", from)
	r.note("Rename to", to)
	return r.FS.Rename(from, to)
}

func (r *recordFS) Remove(name string) error {
	r.note("Remove", name)
	return r.FS.Remove(name)
}

func (r *recordFS) OverwriteFile(name string, off int64, p []byte) error {
	r.ops = append(r.ops, "OverwriteFile "+name)
	return r.FS.(boot.Overwriter).OverwriteFile(name, off, p)
}

// noOverwrite is a file system without boot.Overwriter.
type noOverwrite struct{ boot.FS }

func img(kernel, initramfs, version string, tries int) boot.Image {
	return boot.Image{
		Kernel: strings.NewReader(kernel), Initramfs: strings.NewReader(initramfs),
		Cmdline: "console=ttyS0 root=PARTLABEL=ROOT-" + strings.ToUpper(version), Version: version, Tries: tries,
	}
}

// summary sums Slots up as systemd-boot would name the entries: "a
// b+LEFT-DONE" (b's tries counted, LEFT left and DONE done).
func summary(t *testing.T, l *Loader) string {
	t.Helper()
	entries, err := l.Slots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range entries {
		if e.Counting {
			s = append(s, fmt.Sprintf("%s+%d-%d", e.Slot, e.Left, e.Done))
		} else {
			s = append(s, string(e.Slot))
		}
	}
	return strings.Join(s, " ")
}

func envVars(t *testing.T, fsys boot.FS) map[string]string {
	t.Helper()
	b, err := fsys.ReadFile(EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	e, err := grubenv.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, k := range e.Keys() {
		m[k], _ = e.Get(k)
	}
	return m
}

// grubCounts does what the script's save_env does: one try less, in place.
func grubCounts(t *testing.T, fsys boot.FS) {
	t.Helper()
	old, err := fsys.ReadFile(EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := grubenv.Update(old, func(e *grubenv.Env) error {
		v, _ := e.Get(VarTries)
		if v < "1" || v > "9" || len(v) != 1 {
			return fmt.Errorf("GRUB counts no tries %q", v)
		}
		return e.SetFirst(VarTries, string(v[0]-1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := fsys.(boot.Overwriter).OverwriteFile(EnvPath, 0, b); err != nil {
		t.Fatal(err)
	}
}

// scriptCheck runs grub-script-check on the grub.cfg fsys holds, and on
// the slot.cfg of each slot installed.
func scriptCheck(t *testing.T, fsys boot.FS) {
	t.Helper()
	names := []string{CfgPath}
	for _, slot := range []meta.Slot{"a", "b"} {
		if _, err := fsys.ReadFile(slotFile(slot, cfgFile)); err == nil {
			names = append(names, slotFile(slot, cfgFile))
		}
	}
	for _, name := range names {
		b, err := fsys.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		grubScriptCheck(t, name, b)
	}
}

// grubScriptCheck runs grub-script-check on b, the script name.
func grubScriptCheck(t *testing.T, name string, b []byte) {
	t.Helper()
	bin := grubtest.LookTool(t, "grub-script-check", "grub-common")
	file := filepath.Join(t.TempDir(), "script.cfg")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, file).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check %s: %v\n%s", name, err, out)
	}
}

// TestLoader installs the loader and both slots, then goes through the
// default, boot-once, GRUB's counting, CountKexec and Bless, checking
// after each step what the backend says and that grubenv was written in
// place only, where it lies.
func TestLoader(t *testing.T) {
	for _, kind := range fsKinds {
		t.Run(kind.name, func(t *testing.T) {
			ctx := context.Background()
			tfs := kind.make(t)
			rec := &recordFS{FS: tfs.fsys}
			l := New(rec, WithCmdline(""))

			if err := l.InstallLoader(ctx); err != nil {
				t.Fatal(err)
			}
			// Created once, under another name, renamed into place.
			if d := cmp.Diff([]string{"WriteFile grub/grubenv.new", "Rename grub/grubenv.new", "Rename to grub/grubenv"}, rec.env); d != "" {
				t.Errorf("InstallLoader's writes of grubenv (-want, +got):\n%s", d)
			}
			rec.env = nil
			if d := cmp.Diff(map[string]string{VarSlot: "a", VarTrial: TrialNone, VarTries: "0"}, envVars(t, rec)); d != "" {
				t.Errorf("grubenv after InstallLoader (-want, +got):\n%s", d)
			}
			want, err := Render(config())
			if err != nil {
				t.Fatal(err)
			}
			if got, err := rec.ReadFile(CfgPath); err != nil || !bytes.Equal(got, want) {
				t.Errorf("grub.cfg after InstallLoader is not Render's (%v)", err)
			}
			scriptCheck(t, rec)
			if s := summary(t, l); s != "" {
				t.Errorf("Slots before any install: %q", s)
			}
			for _, in := range []struct {
				slot  meta.Slot
				image boot.Image
			}{{"a", img("k1", "i1", "a", 0)}, {"b", img("k2", "i2", "b", 2)}} {
				rec.ops = nil
				if err := l.InstallSlot(ctx, in.slot, in.image); err != nil {
					t.Fatal(err)
				}
				for _, op := range rec.ops {
					if strings.HasPrefix(op, "WriteFile grub/") || strings.HasPrefix(op, "Rename grub/") {
						t.Errorf("InstallSlot: %s", op)
					}
				}
				scriptCheck(t, rec)
			}
			// The loader's install, again, keeps grubenv and grub.cfg.
			cfg, _ := rec.ReadFile(CfgPath)
			env, _ := rec.ReadFile(EnvPath)
			if err := l.InstallLoader(ctx); err != nil {
				t.Fatal(err)
			}
			if got, _ := rec.ReadFile(CfgPath); !bytes.Equal(got, cfg) {
				t.Error("InstallLoader again changed grub.cfg")
			}
			if got, _ := rec.ReadFile(EnvPath); !bytes.Equal(got, env) {
				t.Error("InstallLoader again changed grubenv")
			}
			if d := cmp.Diff(string(want), string(cfg)); d != "" {
				t.Errorf("grub.cfg (-want, +got):\n%s", d)
			}
			if len(rec.env) > 0 {
				t.Errorf("grubenv written other than in place: %q", rec.env)
			}
			at := tfs.envAt()
			t.Logf("grubenv is %s", at)
			if strings.Contains(at, "found") || strings.Contains(at, "no such") {
				t.Fatalf("grubenv: %s", at)
			}

			type state struct {
				def   meta.Slot
				once  meta.Slot // "" none
				slots string    // summary
			}
			for _, step := range []struct {
				name string
				op   func() error
				want state
			}{
				{"installed", func() error { return nil }, state{"a", "", "a b"}},
				{"SetDefault b", func() error { return l.SetDefault(ctx, "b") }, state{"b", "", "a b"}},
				{"SetDefault a", func() error { return l.SetDefault(ctx, "a") }, state{"a", "", "a b"}},
				{"SetBootOnce b", func() error { return l.SetBootOnce(ctx, "b") }, state{"a", "b", "a b+2-0"}},
				{"SetBootOnce b again: left as it is", func() error { return l.SetBootOnce(ctx, "b") }, state{"a", "b", "a b+2-0"}},
				{"CountKexec a: not on trial", func() error { return l.CountKexec(ctx, "a") }, state{"a", "b", "a b+2-0"}},
				{"CountKexec b", func() error { return l.CountKexec(ctx, "b") }, state{"a", "b", "a b+1-1"}},
				{"GRUB counts", func() error { grubCounts(t, rec); return nil }, state{"a", "", "a b+0-2"}},
				{"CountKexec b: no tries left", func() error { return l.CountKexec(ctx, "b") }, state{"a", "", "a b+0-2"}},
				{"SetBootOnce b: tries again, count kept", func() error { return l.SetBootOnce(ctx, "b") }, state{"a", "b", "a b+2-2"}},
				{"Bless a: not on trial", func() error { return l.Bless(ctx, "a") }, state{"a", "b", "a b+2-2"}},
				{"Bless b", func() error { return l.Bless(ctx, "b") }, state{"a", "", "a b"}},
				{"Bless b again", func() error { return l.Bless(ctx, "b") }, state{"a", "", "a b"}},
				{"SetBootOnce a", func() error { return l.SetBootOnce(ctx, "a") }, state{"a", "a", "a+1-0 b"}},
				{"ClearBootOnce", func() error { return l.ClearBootOnce(ctx) }, state{"a", "", "a b"}},
				{"ClearBootOnce again", func() error { return l.ClearBootOnce(ctx) }, state{"a", "", "a b"}},
				{"SetBootOnce b after a", func() error { return l.SetBootOnce(ctx, "b") }, state{"a", "b", "a b+2-0"}},
				{"SetDefault b during the trial", func() error { return l.SetDefault(ctx, "b") }, state{"b", "b", "a b+2-0"}},
			} {
				before := tfs.snapshot()
				if err := step.op(); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				def, err := l.Default(ctx)
				if err != nil {
					t.Fatalf("%s: Default: %v", step.name, err)
				}
				once, ok, err := l.BootOnce(ctx)
				if err != nil || ok != (once != "") {
					t.Fatalf("%s: BootOnce = %q, %v, %v", step.name, once, ok, err)
				}
				if got := (state{def, once, summary(t, l)}); got != step.want {
					t.Errorf("%s: %+v, want %+v", step.name, got, step.want)
				}
				if len(rec.env) > 0 {
					t.Errorf("%s: grubenv written other than in place: %q", step.name, rec.env)
				}
				if now := tfs.envAt(); now != at {
					t.Errorf("%s: grubenv was %s, is %s", step.name, at, now)
				}
				if kind.name == "fat" {
					// Nothing but grubenv's bytes changed: not its
					// directory entry, not the FAT.
					after := tfs.snapshot()
					var off int
					fmt.Sscanf(at, "at %d", &off)
					for i := range before {
						if before[i] != after[i] && (i < off || i >= off+grubenv.Size) {
							t.Fatalf("%s: byte %d of the image changed, outside grubenv", step.name, i)
						}
					}
				}
			}
			// Installing the trial slot again ends its trial first.
			if err := l.InstallSlot(ctx, "b", img("k3", "i3", "b", 1)); err != nil {
				t.Fatal(err)
			}
			if once, ok, _ := l.BootOnce(ctx); ok || summary(t, l) != "a b" {
				t.Errorf("after installing the trial slot again: boot once %q, slots %q", once, summary(t, l))
			}
			if len(rec.env) > 0 {
				t.Errorf("InstallSlot wrote grubenv other than in place: %q", rec.env)
			}
			scriptCheck(t, rec)
			tfs.check()
		})
	}
}

// TestInstallSlot: what InstallSlot writes, what Slots and OpenSlot give
// back, and the tries it records.
func TestInstallSlot(t *testing.T) {
	for _, kind := range fsKinds {
		t.Run(kind.name, func(t *testing.T) {
			ctx := context.Background()
			tfs := kind.make(t)
			l := New(tfs.fsys, WithCmdline("BOOT_IMAGE=/x stagehand.slot=a"))
			if err := l.InstallLoader(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := l.OpenSlot(ctx, "a"); !errors.Is(err, boot.ErrSlotEmpty) {
				t.Errorf("OpenSlot of an empty slot: %v, want ErrSlotEmpty", err)
			}
			for _, tc := range []struct {
				tries, want int
			}{{0, 1}, {1, 1}, {3, 3}, {MaxTries, MaxTries}, {MaxTries + 1, MaxTries}, {1000, MaxTries}} {
				i := img("kernel-b", "initramfs-b", "2.0", tc.tries)
				// The apply passes the running slot's command line,
				// stagehand.slot=, stagehand.grub= and
				// stagehand.partuuid= included.
				i.Cmdline = "console=ttyS0  quiet stagehand.slot=a stagehand.grub=good:a:a stagehand.partuuid=0fc63daf-8483-4772-8e79-3d69d8477de4"
				if err := l.InstallSlot(ctx, "b", i); err != nil {
					t.Fatal(err)
				}
				b, err := tfs.fsys.ReadFile("stagehand/b/slot.cfg")
				if err != nil {
					t.Fatal(err)
				}
				want := fmt.Sprintf("# stagehand slot b: written by stagehand, read by grub/grub.cfg; do not edit.\n"+
					"stagehand_version='2.0'\nstagehand_trial_tries='%d'\nstagehand_cmdline='console=ttyS0 quiet'\nstagehand_ready='b'\n", tc.want)
				if string(b) != want {
					t.Errorf("tries %d: slot.cfg is\n%s\nwant\n%s", tc.tries, b, want)
				}
				if err := l.SetBootOnce(ctx, "b"); err != nil {
					t.Fatal(err)
				}
				if s := summary(t, l); s != fmt.Sprintf("b+%d-0", tc.want) {
					t.Errorf("tries %d: Slots %q", tc.tries, s)
				}
			}
			if err := l.InstallSlot(ctx, "a", img("k", "i", "a", -1)); err == nil {
				t.Error("InstallSlot with -1 tries succeeded")
			}
			entries, err := l.Slots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Slot a, refused, is not there.
			want := []boot.SlotEntry{{
				Slot: "b", Version: "2.0", Cmdline: "console=ttyS0 quiet stagehand.slot=b",
				Kernel: "/stagehand/b/vmlinuz", Initrd: "/stagehand/b/initrd",
				Counting: true, Left: MaxTries, Description: "grub/grub.cfg menu entry 'stagehand slot b'",
			}}
			if d := cmp.Diff(want, entries); d != "" {
				t.Errorf("Slots (-want, +got):\n%s", d)
			}
			f, err := l.OpenSlot(ctx, "b")
			if err != nil {
				t.Fatal(err)
			}
			kernel, _ := io.ReadAll(f.Kernel)
			initrd, _ := io.ReadAll(f.Initramfs)
			if string(kernel) != "kernel-b" || string(initrd) != "initramfs-b" || f.UKI != nil {
				t.Errorf("OpenSlot read %q, %q", kernel, initrd)
			}
			if d := cmp.Diff(want[0], f.Entry); d != "" {
				t.Errorf("OpenSlot's entry (-want, +got):\n%s", d)
			}
			if err := f.Close(); err != nil {
				t.Error(err)
			}
			// A slot whose kernel is gone: OpenSlot says so.
			if err := tfs.fsys.Remove("stagehand/b/vmlinuz"); err != nil {
				t.Fatal(err)
			}
			if _, err := l.OpenSlot(ctx, "b"); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "kernel") {
				t.Errorf("OpenSlot without the kernel: %v", err)
			}
			// slot.cfg cut short: Slots leaves the slot out, OpenSlot
			// and SetDefault say why.
			if err := tfs.fsys.WriteFile("stagehand/b/slot.cfg", strings.NewReader("# x\nstagehand_version='2.0'\nstagehand_trial_tries='3'\n")); err != nil {
				t.Fatal(err)
			}
			if s := summary(t, l); s != "" {
				t.Errorf("Slots with a bad slot.cfg: %q", s)
			}
			for what, err := range map[string]error{
				"OpenSlot":    func() error { _, err := l.OpenSlot(ctx, "b"); return err }(),
				"SetDefault":  l.SetDefault(ctx, "b"),
				"SetBootOnce": l.SetBootOnce(ctx, "a"),
			} {
				if err == nil {
					t.Errorf("%s succeeded", what)
				}
			}
			if err := l.SetDefault(ctx, "b"); !errors.Is(err, ErrBadSlotCfg) {
				t.Errorf("SetDefault with a bad slot.cfg: %v", err)
			}
			if err := l.SetBootOnce(ctx, "a"); !errors.Is(err, boot.ErrSlotEmpty) {
				t.Errorf("SetBootOnce of an empty slot: %v", err)
			}
			tfs.check()
		})
	}
}

// TestInstallSlotOrder: what InstallSlot writes, in order: the trial of
// the slot ended and its slot.cfg removed, so that neither GRUB nor Slots
// takes it while it is written; kernel and initramfs, durable before the
// slot.cfg that completes the slot. Not grub.cfg.
func TestInstallSlotOrder(t *testing.T) {
	ctx := context.Background()
	rec := &recordFS{FS: boot.Dir(t.TempDir())}
	l := New(rec, WithCmdline(""))
	for _, op := range []func() error{
		func() error { return l.InstallLoader(ctx) },
		func() error { return l.InstallSlot(ctx, "b", img("k", "i", "1", 2)) },
		func() error { return l.SetBootOnce(ctx, "b") },
	} {
		if err := op(); err != nil {
			t.Fatal(err)
		}
	}
	rec.ops = nil
	if err := l.InstallSlot(ctx, "b", img("k2", "i2", "2", 2)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"OverwriteFile grub/grubenv",
		"Remove stagehand/b/slot.cfg", "Sync",
		"WriteFile stagehand/b/vmlinuz", "WriteFile stagehand/b/initrd", "Sync",
		"WriteFile stagehand/b/slot.cfg", "Sync",
	}
	if d := cmp.Diff(want, rec.ops); d != "" {
		t.Errorf("InstallSlot's writes (-want, +got):\n%s", d)
	}
}

// TestInherited: Slots' command lines carry this boot's stagehand.grub=
// and stagehand.partuuid= on to a kexec'd kernel, each when it is well
// formed, in the order the script passes them.
func TestInherited(t *testing.T) {
	ctx := context.Background()
	const guid = "6a2f8d1e-0c7b-4e3a-9f51-2b8c4d7e9a10"
	for _, tc := range []struct {
		running string
		want    string // slot b's command line
	}{
		{"BOOT_IMAGE=/x console=ttyS0 stagehand.slot=a stagehand.grub=good:a:a", "console=ttyS0 stagehand.slot=b stagehand.grub=good:a:a"},
		{"console=ttyS0 stagehand.slot=b stagehand.grub=trial:b:b\n", "console=ttyS0 stagehand.slot=b stagehand.grub=trial:b:b"},
		{"console=ttyS0 stagehand.slot=a stagehand.grub=good:a:a stagehand.partuuid=" + guid, "console=ttyS0 stagehand.slot=b stagehand.grub=good:a:a stagehand.partuuid=" + guid},
		{"stagehand.partuuid=" + guid + " stagehand.grub=good:a:a", "console=ttyS0 stagehand.slot=b stagehand.grub=good:a:a stagehand.partuuid=" + guid},
		{"stagehand.partuuid=" + strings.ToUpper(guid) + "\n", "console=ttyS0 stagehand.slot=b stagehand.partuuid=" + strings.ToUpper(guid)},
		{"stagehand.partuuid=none stagehand.grub=good:b:b", "console=ttyS0 stagehand.slot=b stagehand.grub=good:b:b"},
		{"stagehand.partuuid=0a1b2c3d-01", "console=ttyS0 stagehand.slot=b"},
		{"stagehand.partuuid=" + guid + "0", "console=ttyS0 stagehand.slot=b"},
		{"stagehand.partuuid=6a2f8d1e+0c7b-4e3a-9f51-2b8c4d7e9a10", "console=ttyS0 stagehand.slot=b"},
		{"stagehand.partuuid=", "console=ttyS0 stagehand.slot=b"},
		{"console=ttyS0 stagehand.slot=a", "console=ttyS0 stagehand.slot=b"},
		{"", "console=ttyS0 stagehand.slot=b"},
		{"stagehand.grub=good:a:x", "console=ttyS0 stagehand.slot=b"},
		{`stagehand.grub="good:a:a b"`, "console=ttyS0 stagehand.slot=b"},
	} {
		t.Run(tc.running, func(t *testing.T) {
			esp := boot.Dir(t.TempDir())
			l := New(esp, WithCmdline(tc.running))
			i := img("k", "i", "1", 1)
			i.Cmdline = "console=ttyS0"
			if err := l.InstallSlot(ctx, "b", i); err != nil {
				t.Fatal(err)
			}
			entries, err := l.Slots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 || entries[0].Cmdline != tc.want {
				t.Fatalf("Slots = %+v, want b's command line %q", entries, tc.want)
			}
			// The apply installs the next slot with it: the parameters
			// the script sets are not kept.
			i = img("k", "i", "2", 1)
			i.Cmdline = entries[0].Cmdline
			if err := l.InstallSlot(ctx, "a", i); err != nil {
				t.Fatal(err)
			}
			entries, _ = l.Slots(ctx)
			if got := strings.Replace(entries[0].Cmdline, "slot=a", "slot=b", 1); got != tc.want {
				t.Errorf("slot a installed with b's command line has %q", entries[0].Cmdline)
			}
		})
	}
}

// TestBootRecord reads stagehand.grub= as the script writes it.
func TestBootRecord(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		cmdline string
		slot    meta.Slot // BootedSlot, "" for unknown
		plain   meta.Slot // the slot BootedPlain says, "" for none
		err     bool
	}{
		{"good", "ro stagehand.slot=a stagehand.grub=good:a:a", "a", "a", false},
		{"good b", "stagehand.slot=b stagehand.grub=good:b:b quiet", "b", "b", false},
		{"trial", "stagehand.slot=b stagehand.grub=trial:b:b", "b", "", false},
		{"nosave", "stagehand.slot=a stagehand.grub=nosave:a:a", "a", "", false},
		{"noslot", "stagehand.slot=a stagehand.grub=noslot:a:a", "a", "", false},
		{"fallback", "stagehand.slot=b stagehand.grub=good:a:ab", "b", "", false},
		{"fallback of a trial", "stagehand.slot=a stagehand.grub=trial:b:ba", "a", "", false},
		{"hand-picked", "stagehand.slot=b stagehand.grub=good:a:b", "b", "", false},
		{"kexec'd", "stagehand.slot=b stagehand.grub=good:a:a", "a", "a", false},
		{"last wins", "stagehand.grub=good:a:a stagehand.grub=trial:b:b", "b", "", false},
		{"absent", "ro stagehand.slot=a", "", "", false},
		{"empty", "", "", "", false},
		{"no value", "stagehand.grub", "", "", true},
		{"two fields", "stagehand.grub=good:a", "", "", true},
		{"four fields", "stagehand.grub=good:a:a:a", "", "", true},
		{"unknown mode", "stagehand.grub=fine:a:a", "", "", true},
		{"want c", "stagehand.grub=good:c:c", "", "", true},
		{"ran empty", "stagehand.grub=good:a:", "", "", true},
		{"ran other", "stagehand.grub=good:a:ac", "", "", true},
		{"variables unexpanded", "stagehand.grub=${stagehand_mode}:${stagehand_want}:${stagehand_ran}", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(boot.Dir(t.TempDir()), WithCmdline(tc.cmdline))
			slot, known, err := l.BootedSlot(ctx)
			if (err != nil) != tc.err || known != (tc.slot != "") || slot != tc.slot {
				t.Errorf("BootedSlot = %q, %v, %v; want %q", slot, known, err, tc.slot)
			}
			if err != nil && !strings.Contains(err.Error(), ChoiceParam) {
				t.Errorf("the error %q does not name %s", err, ChoiceParam)
			}
			for _, s := range []meta.Slot{"a", "b"} {
				plain, err := l.BootedPlain(ctx, s)
				if (err != nil) != tc.err || plain != (tc.plain == s) {
					t.Errorf("BootedPlain(%s) = %v, %v", s, plain, err)
				}
			}
		})
	}
	if _, err := New(boot.Dir(t.TempDir()), WithCmdline("")).BootedPlain(ctx, "c"); err == nil {
		t.Error("BootedPlain(c) succeeded")
	}
}

func TestParseChoice(t *testing.T) {
	for _, v := range []string{"trial:b:b", "good:a:a", "nosave:a:a", "noslot:a:a", "good:a:ab", "good:b:a"} {
		c, err := ParseChoice(v)
		if err != nil || c.String() != v {
			t.Errorf("ParseChoice(%q) = %+v, %v", v, c, err)
		}
	}
}

// TestRefuses: what the backend refuses leaves the file system as it was.
func TestRefuses(t *testing.T) {
	ctx := context.Background()
	bad := bytes.Repeat([]byte{'#'}, grubenv.Size) // no header
	for _, kind := range fsKinds {
		for _, tc := range []struct {
			name string
			prep func(t *testing.T, fsys boot.FS, l *Loader) // before the snapshot
			op   func(l *Loader) error
			want string // in the error
			is   error
		}{
			{"UKI", nil, func(l *Loader) error {
				return l.InstallSlot(ctx, "b", boot.Image{UKI: strings.NewReader("MZ"), Version: "1"})
			}, "UKIs need systemd-boot", nil},
			{"no kernel", nil, func(l *Loader) error {
				return l.InstallSlot(ctx, "b", boot.Image{Initramfs: strings.NewReader("i")})
			}, "both needed", nil},
			{"slot c", nil, func(l *Loader) error { return l.InstallSlot(ctx, "c", img("k", "i", "1", 1)) }, "not a or b", nil},
			{"bad command line", nil, func(l *Loader) error {
				i := img("k", "i", "1", 1)
				i.Cmdline = `console=ttyS0 x="a b"`
				return l.InstallSlot(ctx, "b", i)
			}, "escaped", nil},
			{"bad version", nil, func(l *Loader) error { return l.InstallSlot(ctx, "b", img("k", "i", "1\n2", 1)) }, "control character", nil},
			{"broken grubenv: InstallLoader", func(t *testing.T, fsys boot.FS, l *Loader) {
				fsys.WriteFile(EnvPath, bytes.NewReader(bad))
			}, func(l *Loader) error { return l.InstallLoader(ctx) }, "remove it", grubenv.ErrInvalid},
			{"short grubenv: InstallLoader", func(t *testing.T, fsys boot.FS, l *Loader) {
				b, _ := newEnv()
				fsys.WriteFile(EnvPath, bytes.NewReader(b[:grubenv.Size-1]))
			}, func(l *Loader) error { return l.InstallLoader(ctx) }, "1023 bytes", grubenv.ErrInvalid},
			{"broken grubenv: InstallSlot", func(t *testing.T, fsys boot.FS, l *Loader) {
				fsys.WriteFile(EnvPath, bytes.NewReader(bad))
			}, func(l *Loader) error { return l.InstallSlot(ctx, "a", img("k", "i", "1", 1)) }, EnvPath, grubenv.ErrInvalid},
			{"broken grubenv: SetDefault", func(t *testing.T, fsys boot.FS, l *Loader) {
				if err := l.InstallSlot(ctx, "a", img("k", "i", "1", 1)); err != nil {
					t.Fatal(err)
				}
				fsys.WriteFile(EnvPath, bytes.NewReader(bad))
			}, func(l *Loader) error { return l.SetDefault(ctx, "a") }, EnvPath, grubenv.ErrInvalid},
			{"broken grubenv: Default", func(t *testing.T, fsys boot.FS, l *Loader) {
				fsys.WriteFile(EnvPath, bytes.NewReader(bad))
			}, func(l *Loader) error { _, err := l.Default(ctx); return err }, EnvPath, grubenv.ErrInvalid},
			{"no grubenv: SetBootOnce", func(t *testing.T, fsys boot.FS, l *Loader) {
				if err := l.InstallSlot(ctx, "a", img("k", "i", "1", 1)); err != nil {
					t.Fatal(err)
				}
			}, func(l *Loader) error { return l.SetBootOnce(ctx, "a") }, "InstallLoader", fs.ErrNotExist},
			{"grubenv without stagehand_slot: Default", func(t *testing.T, fsys boot.FS, l *Loader) {
				var e grubenv.Env
				e.Set("saved_entry", "0")
				b, _ := e.MarshalBinary()
				fsys.WriteFile(EnvPath, bytes.NewReader(b))
			}, func(l *Loader) error { _, err := l.Default(ctx); return err }, "sets no stagehand_slot", nil},
			{"grubenv with stagehand_slot=c: Default", func(t *testing.T, fsys boot.FS, l *Loader) {
				var e grubenv.Env
				e.SetFirst(VarSlot, "c")
				b, _ := e.MarshalBinary()
				fsys.WriteFile(EnvPath, bytes.NewReader(b))
			}, func(l *Loader) error { _, err := l.Default(ctx); return err }, `"c", not a or b`, nil},
		} {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				tfs := kind.make(t)
				l := New(tfs.fsys, WithCmdline(""))
				if tc.prep != nil {
					tc.prep(t, tfs.fsys, l)
				}
				before := tfs.snapshot()
				err := tc.op(l)
				if err == nil || !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
					t.Fatalf("got %v, want an error with %q (%v)", err, tc.want, tc.is)
				}
				if after := tfs.snapshot(); !bytes.Equal(before, after) {
					t.Error("the file system changed")
				}
			})
		}
	}
	// A file system that cannot write over grubenv in place is refused
	// before anything is written.
	dir := t.TempDir()
	l := New(noOverwrite{boot.Dir(dir)})
	for what, err := range map[string]error{
		"InstallLoader": l.InstallLoader(ctx),
		"InstallSlot":   l.InstallSlot(ctx, "a", img("k", "i", "1", 1)),
	} {
		if err == nil || !strings.Contains(err.Error(), "boot.Overwriter") {
			t.Errorf("%s without Overwriter: %v", what, err)
		}
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Errorf("written without Overwriter: %v", names)
	}
}

// TestAdopt: InstallLoader keeps a valid grubenv it did not write, and
// gives it the first-sector variables it lacks.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	esp := boot.Dir(t.TempDir())
	var e grubenv.Env
	e.Set("saved_entry", "0")
	e.SetFirst(VarSlot, "b")
	b, _ := e.MarshalBinary()
	if err := esp.WriteFile(EnvPath, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	l := New(esp, WithCmdline(""))
	if err := l.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{"saved_entry": "0", VarSlot: "b", VarTrial: TrialNone, VarTries: "0"}, envVars(t, esp)); d != "" {
		t.Errorf("grubenv (-want, +got):\n%s", d)
	}
	if def, err := l.Default(ctx); err != nil || def != "b" {
		t.Errorf("Default = %q, %v", def, err)
	}
}

// TestInstallLoaderCfg: grub.cfg is created when absent, left alone when
// it holds the script, and otherwise (a stagehand of another version
// wrote it) replaced whole: written beside it, synced, renamed over it.
func TestInstallLoaderCfg(t *testing.T) {
	ctx := context.Background()
	for _, kind := range fsKinds {
		t.Run(kind.name, func(t *testing.T) {
			tfs := kind.make(t)
			rec := &recordFS{FS: tfs.fsys}
			l := New(rec, WithCmdline(""))
			want, err := Render(config())
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range []struct {
				name string
				cfg  []byte // grub.cfg before; nil: none
				ops  []string
			}{
				{"absent", nil, []string{
					"WriteFile grub/grubenv.new", "Sync", "Rename grub/grubenv.new", "Rename to grub/grubenv",
					"WriteFile grub/grub.cfg", "Sync",
				}},
				{"the same", want, []string{"Sync"}},
				{"another", []byte("# an older stagehand's grub.cfg, longer than the script" + strings.Repeat(".", len(want))), []string{
					"WriteFile grub/grub.cfg.new", "Sync", "Rename grub/grub.cfg.new", "Rename to grub/grub.cfg", "Sync",
				}},
				{"shorter", []byte("# short\n"), []string{
					"WriteFile grub/grub.cfg.new", "Sync", "Rename grub/grub.cfg.new", "Rename to grub/grub.cfg", "Sync",
				}},
			} {
				if step.cfg != nil {
					if err := tfs.fsys.WriteFile(CfgPath, bytes.NewReader(step.cfg)); err != nil {
						t.Fatal(err)
					}
				}
				rec.ops = nil
				if err := l.InstallLoader(ctx); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				if d := cmp.Diff(step.ops, rec.ops); d != "" {
					t.Errorf("%s: InstallLoader's writes (-want, +got):\n%s", step.name, d)
				}
				if got, err := tfs.fsys.ReadFile(CfgPath); err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: grub.cfg after InstallLoader is not Render's (%v)", step.name, err)
				}
				if names, err := tfs.fsys.ReadDir("grub"); err != nil || !slices.Equal(names, []string{"grub.cfg", "grubenv"}) {
					t.Errorf("%s: grub/ holds %q (%v)", step.name, names, err)
				}
			}
			tfs.check()
		})
	}
}

func TestSlotCfg(t *testing.T) {
	good := "# comment\nstagehand_version='1.2'\nstagehand_trial_tries='3'\n# another\nstagehand_cmdline='console=ttyS0 ro'\nstagehand_ready='a'\n"
	c, err := parseSlotCfg("a", []byte(good))
	if err != nil || c != (slotCfg{Version: "1.2", Cmdline: "console=ttyS0 ro", Tries: 3}) {
		t.Fatalf("parseSlotCfg = %+v, %v", c, err)
	}
	for _, ok := range []slotCfg{
		{Version: "", Tries: 9, Cmdline: ""},
		{Version: "a=b é $x ${y} {z};", Tries: 1, Cmdline: "x=y $z {braces};semicolon a|b&c *?[]#"},
		{Version: "6.1.0-28-cloud-amd64 (2024-12-01)", Tries: 2, Cmdline: "rdinit=/prestage console=ttyS0,115200n8 root=PARTLABEL=ROOT-B ro"},
	} {
		for _, slot := range []meta.Slot{"a", "b"} {
			b, err := ok.marshal(slot)
			if err != nil {
				t.Errorf("marshal %+v: %v", ok, err)
				continue
			}
			if again, err := parseSlotCfg(slot, b); err != nil || again != ok {
				t.Errorf("%q does not read back: %+v, %v", b, again, err)
			}
			if _, err := parseSlotCfg(map[meta.Slot]meta.Slot{"a": "b", "b": "a"}[slot], b); !errors.Is(err, ErrBadSlotCfg) || !strings.Contains(err.Error(), "not this slot's letter") {
				t.Errorf("slot %s's slot.cfg read as the other slot's: %v", slot, err)
			}
			grubScriptCheck(t, "slot.cfg", b)
		}
	}
	for _, tc := range []struct {
		name string
		c    slotCfg
		want string
	}{
		{"double quote in cmdline", slotCfg{Tries: 1, Cmdline: `dyndbg="file x.c +p"`}, "escaped"},
		{"single quote in cmdline", slotCfg{Tries: 1, Cmdline: `x='y'`}, "escaped"},
		{"backslash in cmdline", slotCfg{Tries: 1, Cmdline: `x=a\b`}, "escaped"},
		{"control character", slotCfg{Tries: 1, Cmdline: "x=\x01"}, "control"},
		{"non-ASCII", slotCfg{Tries: 1, Cmdline: "x=é"}, "non-ASCII"},
		{"two spaces", slotCfg{Tries: 1, Cmdline: "a  b"}, "one space"},
		{"slot param", slotCfg{Tries: 1, Cmdline: "console=ttyS0 stagehand.slot=b"}, "stagehand.slot"},
		{"choice param", slotCfg{Tries: 1, Cmdline: "stagehand.grub=trial:b:b"}, "stagehand.grub"},
		{"partuuid param", slotCfg{Tries: 1, Cmdline: "stagehand.partuuid=6a2f8d1e-0c7b-4e3a-9f51-2b8c4d7e9a10"}, "stagehand.partuuid"},
		{"quote in version", slotCfg{Tries: 1, Version: "it's"}, "cannot hold"},
		{"double quote in version", slotCfg{Tries: 1, Version: `"1"`}, "cannot hold"},
		{"backslash in version", slotCfg{Tries: 1, Version: `1\2`}, "cannot hold"},
		{"line break in version", slotCfg{Tries: 1, Version: "1\n2"}, "control"},
		{"tries 0", slotCfg{Tries: 0}, "0 tries"},
		{"tries 10", slotCfg{Tries: 10}, "10 tries"},
	} {
		t.Run("marshal "+tc.name, func(t *testing.T) {
			b, err := tc.c.marshal("a")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("marshal = %q, %v; want an error with %q", b, err, tc.want)
			}
		})
	}
	if _, err := (slotCfg{Tries: 1}).marshal("c"); err == nil {
		t.Error("marshal for slot c succeeded")
	}
	const (
		lv = "stagehand_version='1'\n"
		ln = "stagehand_trial_tries='3'\n"
		lc = "stagehand_cmdline='x'\n"
		lr = "stagehand_ready='a'\n"
	)
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "empty"},
		{"cut short", lv + ln + "stagehand_cmdline='con", "newline"},
		{"cut in a quote", lv + ln + "stagehand_cmdline='con\n", "not one word in single quotes"},
		{"no ready", lv + ln + lc, "no stagehand_ready"},
		{"ready cut", lv + ln + lc + "stagehand_ready='a\n", "single quotes"},
		{"ready of b", lv + ln + lc + "stagehand_ready='b'\n", "not this slot's letter a"},
		{"ready empty", lv + ln + lc + "stagehand_ready=''\n", "not this slot's letter"},
		{"blank line", lv + "\n" + ln + lc + lr, "line 2: blank"},
		{"no version", ln + lc + lr, "line 1: \"stagehand_trial_tries\" where stagehand_version is due"},
		{"out of order", lv + lc + ln + lr, "line 2: \"stagehand_cmdline\" where stagehand_trial_tries is due"},
		{"twice", lv + lv + ln + lc + lr, "line 2: \"stagehand_version\" where stagehand_trial_tries is due"},
		{"after ready", lv + ln + lc + lr + "stagehand_cmdline='y'\n", "after stagehand_ready"},
		{"unknown", lv + ln + lc + "initrd='/x'\n" + lr, `"initrd" where stagehand_ready is due`},
		{"the old slot.conf", "version=1\ntries=3\ncmdline=x\n", "where stagehand_version is due"},
		{"no =", lv + ln + lc + lr + "hello\n", "after stagehand_ready"},
		{"no = before", "hello\n" + lv + ln + lc + lr, "neither a comment nor"},
		{"unquoted", "stagehand_version=1\n" + ln + lc + lr, "single quotes"},
		{"double quoted", `stagehand_version="1"` + "\n" + ln + lc + lr, "single quotes"},
		{"two words", "stagehand_version='1' '2'\n" + ln + lc + lr, "single quotes"},
		{"blank before =", "stagehand_version ='1'\n" + ln + lc + lr, "where stagehand_version is due"},
		{"tries 0", lv + "stagehand_trial_tries='0'\n" + lc + lr, "one digit"},
		{"tries 10", lv + "stagehand_trial_tries='10'\n" + lc + lr, "one digit"},
		{"tries 01", lv + "stagehand_trial_tries='01'\n" + lc + lr, "one digit"},
		{"tries x", lv + "stagehand_trial_tries='x'\n" + lc + lr, "one digit"},
		{"tries blank", lv + "stagehand_trial_tries=' 3'\n" + lc + lr, "one digit"},
		{"CRLF", "stagehand_version='1'\r\n" + ln + lc + lr, "control character"},
		{"tab", lv + ln + "stagehand_cmdline='a\tb'\n" + lr, "control character"},
		{"NUL", lv + ln + lc + lr + "\x00\n", "control character"},
		{"not UTF-8", "stagehand_version='\xff'\n" + ln + lc + lr, "UTF-8"},
		{"two spaces", lv + ln + "stagehand_cmdline='a  b'\n" + lr, "one space"},
		{"leading space", lv + ln + "stagehand_cmdline=' a'\n" + lr, "one space"},
		{"slot param", lv + ln + "stagehand_cmdline='a stagehand.slot=b'\n" + lr, "stagehand.slot"},
		{"choice param", lv + ln + "stagehand_cmdline='stagehand.grub=good:a:a'\n" + lr, "stagehand.grub"},
		{"partuuid param", lv + ln + "stagehand_cmdline='stagehand.partuuid=x'\n" + lr, "stagehand.partuuid"},
		{"quote", lv + ln + "stagehand_cmdline='a=\"b\"'\n" + lr, "escaped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSlotCfg("a", []byte(tc.in))
			if !errors.Is(err, ErrBadSlotCfg) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseSlotCfg = %v, want ErrBadSlotCfg with %q", err, tc.want)
			}
		})
	}
}
