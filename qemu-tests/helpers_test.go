//go:build vm

package qemutests

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// repoRoot is the top of the work tree.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// Kernel is a Debian kernel unpacked by scripts/vm-deps.sh.
type Kernel struct {
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
	k := Kernel{Vmlinuz: filepath.Join(dir, "vmlinuz"), Release: strings.TrimSpace(string(rel))}
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
	if _, err := os.Stat(boot.SystemdBootEFI); err != nil {
		t.Fatalf("systemd-boot is missing (%v): %s", err, vm.Fix)
	}
}

var testOS struct {
	once sync.Once
	path string
	err  error
}

// buildTestOS builds qemu-tests/testos, static, once per test binary.
func buildTestOS(t testing.TB) string {
	t.Helper()
	testOS.once.Do(func() {
		dir, err := os.MkdirTemp("", "stagehand-testos-")
		if err != nil {
			testOS.err = err
			return
		}
		testOS.path = filepath.Join(dir, "testos")
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", testOS.path, "./qemu-tests/testos")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			testOS.err = fmt.Errorf("building the test OS: %v: %s", err, out)
		}
	})
	if testOS.err != nil {
		t.Fatal(testOS.err)
	}
	return testOS.path
}

// testInitramfs writes the initramfs of a slot: the test OS as /init, its
// version, and the virtio and efivarfs modules of k.
func testInitramfs(t testing.TB, k Kernel, version string) string {
	t.Helper()
	mods, err := initramfs.OpenModules(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	a := initramfs.New()
	err = a.Add(
		initramfs.File{Path: "init", Source: buildTestOS(t), Mode: 0o755},
		initramfs.File{Path: "etc/testos-version", Data: []byte(version + "\n"), Mode: 0o644},
		initramfs.File{Path: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddModules(mods, "virtio_pci", "virtio_blk", "efivarfs"); err != nil {
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

// newDisk makes a stagehand disk image with slot A holding k and an
// initramfs of the test OS at version, as `stager disk init` does.
func newDisk(t testing.TB, k Kernel, version, cmdline string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	_, err := boot.InitDisk(context.Background(), img, boot.DiskConfig{
		Layout:    disk.Layout{Size: 800 << 20},
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

// newMachine prepares a VM on img. Its directory (variable store, console
// logs) is the test's, or STAGEHAND_VM_LOGS/TEST-NAME to keep it.
func newMachine(t testing.TB, img string) *vm.Machine {
	t.Helper()
	dir := t.TempDir()
	if keep := os.Getenv("STAGEHAND_VM_LOGS"); keep != "" {
		dir = filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
	}
	m, err := vm.New(vm.Config{Dir: dir, Disk: img})
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
