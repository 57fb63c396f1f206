//go:build vm

package bootdisk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/initramfs"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// TestQEMUAdoptBIOS boots a disk adopt converted: a Debian-like BIOS
// disk sgdisk made (a BIOS boot partition, a root, free space), adopted
// for grub-bios with slot a a kernel of build/kernels/cloud and a tiny
// initramfs, booted by SeaBIOS (one QEMU, TCG): GRUB's boot code in the
// MBR loads the core image from partition 1, which finds grub.cfg on the
// new ESP, partition 3, and starts slot a's kernel with stagehand.slot=a.
// Run it with go test -tags vm -run TestQEMUAdoptBIOS ./bootdisk.
func TestQEMUAdoptBIOS(t *testing.T) {
	dir := os.Getenv("STAGEHAND_KERNELS")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "build", "kernels")
	}
	kernel := filepath.Join(dir, "cloud", "vmlinuz")
	if _, err := os.Stat(kernel); err != nil {
		t.Fatalf("no cloud kernel (%v): %s", err, vm.Fix)
	}
	var cpio bytes.Buffer
	if _, err := initramfs.New().WriteTo(&cpio); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, cpio.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	img, _ := debianBIOS(t, 1100*mib)
	cfg := AdoptConfig{Bootloader: GRUBBIOS, Kernel: kernel, Initramfs: initrd, Cmdline: "console=ttyS0 panic=0", Version: "adopted-v1"}
	info, err := Adopt(context.Background(), img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("adopted:\n%s", strings.Join(info.Steps, "\n"))
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := d.Find(disk.LabelESP)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}

	m, err := vm.New(vm.Config{Dir: t.TempDir(), Disk: img, Firmware: vm.SeaBIOS, MemoryMB: 512, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.Kill(); err != nil { // by its pid
			t.Error(err)
		}
		t.Logf("QEMU (SeaBIOS) ran %s; the end of its console:\n%s", r.Elapsed().Round(100*time.Millisecond), r.Tail(30))
	}()
	ctx := context.Background()
	guid := strings.ToLower(esp.GUID)
	sub, err := r.Expect(ctx, 90*time.Second, regexp.MustCompile(`stagehand: partition GUID of (hd0,gpt3): ([0-9a-f-]{36})`))
	if err != nil {
		t.Fatal(err)
	}
	if sub[2] != guid {
		t.Errorf("GRUB runs from a partition of GUID %s, not the ESP's %s", sub[2], guid)
	}
	sub, err = r.Expect(ctx, 90*time.Second, regexp.MustCompile(`Command line: ([^\r\n]*)`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the kernel's command line: %s", sub[1])
	for _, want := range []string{"console=ttyS0", "panic=0", "stagehand.slot=a", "stagehand.grub=good:a:a", "stagehand.partuuid=" + guid} {
		if !strings.Contains(" "+sub[1]+" ", " "+want+" ") {
			t.Errorf("the kernel's command line lacks %s", want)
		}
	}
}
