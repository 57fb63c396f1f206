package realos

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/stagehand-dev/stagehand/initramfs"
)

//go:embed layer
var layer embed.FS

// Modules are what the real OS's init loads from the initramfs (with their
// dependencies): the virtio disk and efivarfs (prestage loaded them
// already when it ran; the OS boots without it too), the root image's loop
// device, squashfs and overlay, autofs (the ESP's automount), the ESP's
// vfat with its code pages, and ext4 (the tests' images disk).
var Modules = []string{"virtio_pci", "virtio_blk", "efivarfs", "loop", "squashfs", "overlay", "autofs4",
	"vfat", "nls_cp437", "nls_ascii", "nls_iso8859-1", "ext4"}

// Masked are units of the Debian tree the real OS does not run: gettys (no
// one logs in; the console is the tests' and the demo's), the first-boot
// prompts, systemd-boot-update (stagehand owns the ESP), and what a
// read-only image with its users and modules built in has no use for
// (modprobe@: the init loaded the modules; sysusers; utmp; pstore). Under
// TCG every exec of a binary linked with libsystemd-shared costs about a
// second.
var Masked = []string{"getty.target", "getty-static.service", "serial-getty@ttyS0.service", "getty@tty1.service",
	"systemd-firstboot.service", "systemd-boot-update.service", "modprobe@.service", "systemd-sysusers.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-pstore.service"}

// MaskedGenerators are the generators of the Debian tree the real OS does
// not run: it has no encrypted, verity or integrity volumes, no swap to
// resume from, no SysV scripts, no rc.local, and its root is no GPT
// partition. What stays: fstab (the ESP's automount), bless-boot (boot
// counting) and run.
var MaskedGenerators = []string{"systemd-cryptsetup-generator", "systemd-debug-generator", "systemd-getty-generator",
	"systemd-gpt-auto-generator", "systemd-hibernate-resume-generator", "systemd-integritysetup-generator",
	"systemd-rc-local-generator", "systemd-system-update-generator", "systemd-sysv-generator", "systemd-veritysetup-generator"}

// machineID is the real OS's: fixed, so that no boot counts as a first
// boot.
const machineID = "5fa3e1b0c0de4a1e9e5c5ea1ab1e0001\n"

// Slot is what one slot's initramfs holds of the real OS.
type Slot struct {
	Root    string             // the repository (contrib/ is read from it)
	Image   string             // the root image (Build)
	Init    string             // the real OS's init (./qemu-tests/realos/init), static
	Stager  string             // the stager, static
	Modules *initramfs.Modules // the kernel's module tree
	Version string             // the slot's version, at /etc/stagehand/version
	Files   []initramfs.File   // more files of the slot's layer, paths relative to the root
}

// Archive returns the real OS's part of the slot's initramfs: its init at
// /init, the root image at /root.sfs, the modules of Modules, and the
// slot's layer under /slot, which the init lays over the root: the stager
// at /usr/bin/stager, contrib's units (enabled) and example health checks,
// the ESP's automount (fstab), the test driver, the version, and Files.
// prestage is added by the caller, as `stager initramfs build` does.
func (s Slot) Archive() (*initramfs.Archive, error) {
	a := initramfs.New()
	files := []initramfs.File{
		{Path: "init", Source: s.Init, Mode: 0o755},
		{Path: "root.sfs", Source: s.Image, Mode: 0o644},
		{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	}
	l := func(p string) string { return path.Join("slot", p) }
	link := func(p, target string) initramfs.File {
		return initramfs.File{Path: l(p), Data: []byte(target), Mode: fs.ModeSymlink | 0o777}
	}
	data := func(p string, b []byte, mode fs.FileMode) initramfs.File {
		return initramfs.File{Path: l(p), Data: b, Mode: mode}
	}
	const units = "usr/lib/systemd/system"
	for _, u := range []string{"stagehand-check.service", "stagehand-confirm.service"} {
		b, err := os.ReadFile(filepath.Join(s.Root, "contrib", u))
		if err != nil {
			return nil, fmt.Errorf("the slot's layer: %w", err)
		}
		files = append(files, data(path.Join(units, u), b, 0o644))
	}
	files = append(files,
		link(path.Join(units, "boot-complete.target.requires", "stagehand-check.service"), "../stagehand-check.service"),
		link(path.Join(units, "basic.target.wants", "stagehand-confirm.service"), "../stagehand-confirm.service"),
		initramfs.File{Path: l("usr/bin/stager"), Source: s.Stager, Mode: 0o755},
		data("etc/stagehand/version", []byte(s.Version+"\n"), 0o644),
		data("etc/machine-id", []byte(machineID), 0o444),
		data("etc/hostname", []byte("stagehand\n"), 0o644),
	)
	contrib, err := treeFiles(filepath.Join(s.Root, "contrib"), []string{"systemd-bless-boot.service.d", "check"})
	if err != nil {
		return nil, err
	}
	for _, f := range contrib {
		to := path.Join(units, f.Path)
		if strings.HasPrefix(f.Path, "check/") {
			to = path.Join("usr/lib/stagehand", f.Path)
		}
		f.Path = l(to)
		files = append(files, f)
	}
	for _, name := range []string{"driver", "stagehand-test.service", "fstab"} {
		b, err := layer.ReadFile("layer/" + name)
		if err != nil {
			return nil, err
		}
		switch name {
		case "driver":
			files = append(files, data("usr/lib/stagehand-test/driver", b, 0o755))
		case "fstab":
			files = append(files, data("etc/fstab", b, 0o644))
		default:
			files = append(files, data(path.Join(units, name), b, 0o644),
				link(path.Join(units, "multi-user.target.wants", name), "../"+name))
		}
	}
	for _, u := range Masked {
		files = append(files, link(path.Join("etc/systemd/system", u), "/dev/null"))
	}
	for _, g := range MaskedGenerators {
		files = append(files, link(path.Join("etc/systemd/system-generators", g), "/dev/null"))
	}
	for _, f := range s.Files {
		f.Path = l(f.Path)
		files = append(files, f)
	}
	if err := a.Add(files...); err != nil {
		return nil, err
	}
	if _, err := a.AddModules(s.Modules, Modules...); err != nil {
		return nil, err
	}
	return a, nil
}

// treeFiles lists the regular files under the subdirectories subs of dir,
// their paths relative to dir, sorted.
func treeFiles(dir string, subs []string) ([]initramfs.File, error) {
	var files []initramfs.File
	for _, sub := range subs {
		err := filepath.WalkDir(filepath.Join(dir, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, initramfs.File{Path: filepath.ToSlash(rel), Source: p, Mode: fi.Mode().Perm()})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("the slot's layer: %w", err)
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}
