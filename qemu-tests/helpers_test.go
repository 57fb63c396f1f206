//go:build vm

package qemutests

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/internal/gobuild"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// withPartition opens the disk image img (QEMU not running), calls f with
// its partition labelled label, and closes the image.
func withPartition(t testing.TB, img, label string, writable bool, f func(r *disk.Region)) {
	t.Helper()
	d, err := disk.Open(img, writable)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(label)
	if err != nil {
		t.Fatal(err)
	}
	f(r)
}

// repoRoot is the top of the work tree.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// Kernel is a Debian kernel unpacked by scripts/vm-deps.sh.
type Kernel struct {
	Flavor  string // "cloud" or "generic"
	Vmlinuz string
	Release string
	Modules string // lib/modules/RELEASE
}

// kernel returns the kernel of a flavor ("cloud" or "generic"), failing
// the test when it is missing.
func kernel(t testing.TB, flavor string) Kernel {
	t.Helper()
	dir := os.Getenv("STAGEHAND_KERNELS")
	if dir == "" {
		dir = filepath.Join(repoRoot(), "build", "kernels")
	}
	dir = filepath.Join(dir, flavor)
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		t.Fatalf("no %s kernel in %s (%v): %s", flavor, dir, err, vm.Fix)
	}
	k := Kernel{Flavor: flavor, Vmlinuz: filepath.Join(dir, "vmlinuz"), Release: strings.TrimSpace(string(rel))}
	k.Modules = filepath.Join(dir, "lib", "modules", k.Release)
	for _, p := range []string{k.Vmlinuz, k.Modules} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s kernel incomplete: %v: %s", flavor, err, vm.Fix)
		}
	}
	return k
}

// checkHost fails the test when QEMU, OVMF or systemd-boot is missing.
func checkHost(t testing.TB) {
	t.Helper()
	if err := vm.CheckHost(vm.OVMF); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(systemdboot.EFIBinary); err != nil {
		t.Fatalf("systemd-boot is missing (%v): %s", err, vm.Fix)
	}
}

// shared holds what the tests build once per test binary run (binaries,
// initramfs archives); TestMain removes it.
var shared struct {
	mu     sync.Mutex
	dir    string
	builds map[string]*onceFile
}

// onceFile is a file made once per test binary run.
type onceFile struct {
	once sync.Once
	path string
	err  error
}

// sharedFile returns the onceFile of key and the directory to make it in.
func sharedFile(key string) (*onceFile, string, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dir == "" {
		dir, err := os.MkdirTemp("", "stagehand-vmtests-")
		if err != nil {
			return nil, "", err
		}
		shared.dir = dir
		shared.builds = map[string]*onceFile{}
	}
	f := shared.builds[key]
	if f == nil {
		f = &onceFile{}
		shared.builds[key] = f
	}
	return f, shared.dir, nil
}

// once makes the file of key once per test binary run: build is given the
// path to write and returns an error; every caller gets the same path, or
// fails with the same error.
func once(t testing.TB, key string, build func(path string) error) string {
	t.Helper()
	f, dir, err := sharedFile(key)
	if err != nil {
		t.Fatal(err)
	}
	f.once.Do(func() {
		f.path = filepath.Join(dir, strings.NewReplacer("/", "_", ".", "_").Replace(key))
		f.err = build(f.path)
	})
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// buildStatic builds the command in the package pkg (a path relative to
// the repository, "./cmd/prestage"), static for linux/amd64 with
// CGO_ENABLED=0, once per test binary run.
func buildStatic(t testing.TB, pkg string) string {
	t.Helper()
	return once(t, "bin"+pkg, func(out string) error {
		return gobuild.Static(repoRoot(), "amd64", out, pkg)
	})
}

// buildTestOS builds qemu-tests/testos, static, once per test binary.
func buildTestOS(t testing.TB) string {
	t.Helper()
	return buildStatic(t, "./qemu-tests/testos")
}

// testOSModules are the modules the test OS loads: the virtio disk,
// efivarfs, the kernel's FAT with the code pages an ESP mount uses
// (esp-hold) and ext4 for the images disk (mount-images; built into the
// cloud kernel).
var testOSModules = []string{"virtio_pci", "virtio_blk", "efivarfs",
	"vfat", "nls_cp437", "nls_ascii", "nls_iso8859-1", "ext4"}

// flavorModules are more modules the test OS loads on a kernel flavor: the
// i6300esb watchdog's driver (the watchdog step) is in the generic kernel
// only.
var flavorModules = map[string][]string{"generic": {"i6300esb"}}

// testOSArchive is the test OS's initramfs: the test OS (binary testos) as
// /init and /sbin/reboot, its version, /dev/console, the modules of testOSModules (and of
// flavorModules) from k,
// and extra files.
func testOSArchive(testos string, k Kernel, version string, extra ...initramfs.File) (*initramfs.Archive, error) {
	mods, err := initramfs.OpenModules(k.Modules)
	if err != nil {
		return nil, err
	}
	a := initramfs.New()
	err = a.Add(append([]initramfs.File{
		{Path: "init", Source: testos, Mode: 0o755},
		{Path: "etc/testos-version", Data: []byte(version + "\n"), Mode: 0o644},
		{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		// The test OS is also the init system's reboot command, which
		// `stager --reboot` uses to reboot cleanly.
		{Path: "sbin/reboot", Data: []byte("/init"), Mode: fs.ModeSymlink | 0o777},
	}, extra...)...)
	if err != nil {
		return nil, err
	}
	if _, err := a.AddModules(mods, append(testOSModules, flavorModules[k.Flavor]...)...); err != nil {
		return nil, err
	}
	return a, nil
}

// testInitramfs writes the initramfs of a slot: the test OS as /init, its
// version, and the virtio and efivarfs modules of k.
func testInitramfs(t testing.TB, k Kernel, version string) string {
	t.Helper()
	a, err := testOSArchive(buildTestOS(t), k, version)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "initramfs-"+version)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := a.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLayout is the layout of the test disks: the default partition sizes
// on the smallest disk that holds them.
func testLayout() disk.Layout {
	return disk.Layout{Size: disk.Layout{}.MinSize()}
}

// newDisk makes a stagehand disk image with slot A holding k and an
// initramfs of the test OS at version, as `stager disk init` does.
func newDisk(t testing.TB, k Kernel, version, cmdline string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	_, err := bootdisk.Init(context.Background(), img, bootdisk.Config{
		Layout:    testLayout(),
		Kernel:    k.Vmlinuz,
		Initramfs: testInitramfs(t, k, version),
		Cmdline:   cmdline,
		Version:   version,
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// newMachine prepares a VM on img, with more QEMU arguments args. Its
// directory (variable store, console logs) is the test's, or
// STAGEHAND_VM_LOGS/TEST-NAME to keep it.
func newMachine(t testing.TB, img string, args ...string) *vm.Machine {
	t.Helper()
	return newMachineOn(t, vm.OVMF, img, args...)
}

// newMachineOn is newMachine with the firmware fw.
func newMachineOn(t testing.TB, fw vm.Firmware, img string, args ...string) *vm.Machine {
	t.Helper()
	return newMachineWith(t, vm.Config{Disk: img, Firmware: fw, Args: args})
}

// newMachineWith is newMachine with cfg, its directory set as there.
func newMachineWith(t testing.TB, cfg vm.Config) *vm.Machine {
	t.Helper()
	cfg.Dir = t.TempDir()
	if keep := os.Getenv("STAGEHAND_VM_LOGS"); keep != "" {
		cfg.Dir = filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
	}
	m, err := vm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ansi matches terminal escapes (OVMF clears the screen) and CRs.
var ansi = regexp.MustCompile(`\x1b\[[0-9;=?]*[A-Za-z]|\r`)

// start boots m. When the test ends QEMU is killed if it still runs, and a
// failed test gets the console log in its output.
func start(t testing.TB, m *vm.Machine) *vm.Run {
	t.Helper()
	r, err := m.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Kill(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("console log (%s, kept with STAGEHAND_VM_LOGS=DIR; %s since power on):\n%s",
				r.Log(), r.Elapsed().Round(100_000_000), ansi.ReplaceAllString(r.Console(), ""))
		}
	})
	return r
}
