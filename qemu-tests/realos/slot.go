package realos

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

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

// layerArgs are mksquashfs's options for the slot's layer: zstd at level
// 3 (the 56 MiB stager packs to 17 MiB in 0.2 s; level 15, the default,
// saves 2 MiB more for 4 s a slot), owned by root, fixed times so that
// the same layer gives the same bytes.
var layerArgs = []string{"-comp", "zstd", "-Xcompression-level", "3", "-all-root", "-all-time", "0",
	"-mkfs-time", "0", "-no-xattrs", "-noappend", "-quiet", "-no-progress"}

// Archive returns the real OS's part of the slot's initramfs: its init at
// /init, the root image at /root.sfs, the modules of Modules, and the
// slot's layer (Layer) packed as the squashfs /slot.sfs, which the init
// lays over the root image. prestage is added by the caller, as `stager
// initramfs build` does.
//
// The layer is a squashfs, not a tree in the archive, because it is most
// of a slot: the stager alone is 56 MiB, and every byte of a slot is
// written by the apply, read by systemd-boot through the firmware and
// unpacked by the kernel at every boot.
func (s Slot) Archive() (*initramfs.Archive, error) {
	layer, err := s.Layer()
	if err != nil {
		return nil, err
	}
	sfs, err := packLayer(layer)
	if err != nil {
		return nil, err
	}
	a := initramfs.New()
	if err := a.Add(
		initramfs.File{Path: "init", Source: s.Init, Mode: 0o755},
		initramfs.File{Path: "root.sfs", Source: s.Image, Mode: 0o644},
		initramfs.File{Path: "slot.sfs", Data: sfs, Mode: 0o644},
		initramfs.File{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	); err != nil {
		return nil, err
	}
	if _, err := a.AddModules(s.Modules, Modules...); err != nil {
		return nil, err
	}
	return a, nil
}

// Layer returns the files of the slot's layer, their paths relative to
// the root they are laid over: the stager at /usr/bin/stager, contrib's
// units (enabled) and example health checks, the masks, the ESP's
// automount (fstab), the test driver, the version, and Files.
func (s Slot) Layer() ([]initramfs.File, error) {
	link := func(p, target string) initramfs.File {
		return initramfs.File{Path: p, Data: []byte(target), Mode: fs.ModeSymlink | 0o777}
	}
	data := func(p string, b []byte, mode fs.FileMode) initramfs.File {
		return initramfs.File{Path: p, Data: b, Mode: mode}
	}
	const units = "usr/lib/systemd/system"
	var files []initramfs.File
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
		initramfs.File{Path: "usr/bin/stager", Source: s.Stager, Mode: 0o755},
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
		f.Path = to
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
	return append(files, s.Files...), nil
}

// packLayer packs files as a squashfs (mksquashfs, layerArgs) and returns
// its bytes. The files are laid out in a temporary tree through the
// initramfs package's own archive, so that a layer means what an archive
// of the same files would.
func packLayer(files []initramfs.File) ([]byte, error) {
	a := initramfs.New()
	if err := a.Add(files...); err != nil {
		return nil, fmt.Errorf("the slot's layer: %w", err)
	}
	var b bytes.Buffer
	if _, err := a.WriteTo(&b); err != nil {
		return nil, fmt.Errorf("the slot's layer: %w", err)
	}
	tmp, err := os.MkdirTemp("", "realos-layer-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return nil, err
	}
	err = cpio.ForEachRecord(cpio.Newc.Reader(bytes.NewReader(b.Bytes())), func(rec cpio.Record) error {
		return cpio.CreateFileInRoot(rec, tree, false)
	})
	if err != nil {
		return nil, fmt.Errorf("the slot's layer: %w", err)
	}
	out := filepath.Join(tmp, "slot.sfs")
	if msg, err := exec.Command("mksquashfs", append([]string{tree, out}, layerArgs...)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("packing the slot's layer: mksquashfs: %v: %s", err, bytes.TrimSpace(msg))
	}
	return os.ReadFile(out)
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
