//go:build vm

package install

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/grub/grubenv"
	"github.com/stagehand-dev/stagehand/grub/grubtest"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// The VM tests boot the images BIOS and EFI write, with Debian's stock
// GRUB 2.06, under QEMU (TCG, one guest at a time, each holding a slot of
// the project's guest pool: qemu-tests/vm.Launch): a PC BIOS (SeaBIOS,
// QEMU's default firmware) and UEFI (OVMF). Run them with
// go test -tags vm ./grub/install.

// qemuTimeout bounds each wait for the guest: GRUB is up in seconds.
const qemuTimeout = 60 * time.Second

// okCfg is the grub.cfg of the plain boot: it says where GRUB found it,
// then powers off.
const okCfg = `serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
echo "STAGEHAND-GRUB-OK prefix=$prefix root=$root"
halt
`

// The root is matched exactly: under OVMF, the firmware's copy of the
// console on the serial port may run into GRUB's own line.
var okRE = regexp.MustCompile(`STAGEHAND-GRUB-OK prefix=(\S+) root=([a-z]+[0-9]+,[a-z]+[0-9]+)`)

// testModules are the image's modules: ImageModules, and halt for okCfg.
func testModules(platform string) []string { return append(ImageModules(platform), "halt") }

// newGRUBDisk writes a disk image with the stagehand layout and a BIOS
// boot partition, its ESP holding files (paths from the ESP's root).
func newGRUBDisk(t *testing.T, files map[string][]byte) (img string, d *disk.Disk, esp *fat.Volume) {
	t.Helper()
	img = filepath.Join(t.TempDir(), "disk.img")
	l := disk.Layout{ESPSize: disk.MinESPSize, StageSize: 1 << 20, BIOSBoot: true}
	l.Size = l.MinSize()
	d, err := disk.Create(context.Background(), img, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	esp, err = fat.Format(r, r.Size, boot.ESPLabel)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := esp.WriteFile(strings.TrimPrefix(name, "/"), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
	return img, d, esp
}

// choiceRE is the line in which the stagehand grub.cfg says which slot it
// chose, and why; partUUIDRE the one in which it says the partition GUID
// it passes as stagehand.partuuid=, that of $root, where it runs from.
var (
	choiceRE   = regexp.MustCompile(`stagehand: slot (\S+) \((\S+)\)`)
	partUUIDRE = regexp.MustCompile(`stagehand: partition GUID of ([a-z]+[0-9]+,[a-z]+[0-9]+): ([0-9a-f-]{36})`)
)

// espGUID is the partition GUID of img's ESP, lower-case, as GRUB's probe
// writes it.
func espGUID(t *testing.T, img string) string {
	t.Helper()
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := d.Find(disk.LabelESP)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ToLower(r.GUID)
}

// stagehandESP has grub.Loader write its grub.cfg and grubenv to esp and
// install both slots, each kernel no Linux kernel, with def the default
// and a trial of the other slot armed with tries tries.
func stagehandESP(t *testing.T, esp *fat.Volume, def, trial meta.Slot, tries int) {
	t.Helper()
	ctx := context.Background()
	l := grub.New(esp, grub.WithCmdline(""))
	if err := l.InstallLoader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		img := boot.Image{
			Kernel:    strings.NewReader("no kernel " + string(slot)),
			Initramfs: strings.NewReader("initramfs " + string(slot)),
			Cmdline:   "console=ttyS0", Version: "v-" + string(slot), Tries: tries,
		}
		if err := l.InstallSlot(ctx, slot, img); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetDefault(ctx, def); err != nil {
		t.Fatal(err)
	}
	if err := l.SetBootOnce(ctx, trial); err != nil {
		t.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		t.Fatal(err)
	}
}

// triesLeft reads grubenv's count of the trial's tries from img's ESP.
func triesLeft(t *testing.T, img string) string {
	t.Helper()
	b, err := grubtest.ReadESP(t, img, grub.EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	e, err := grubenv.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := e.Get(grub.VarTries)
	return v
}

// installBIOS builds the core image with modules and installs it.
func installBIOS(t *testing.T, d *disk.Disk, modules []string) {
	t.Helper()
	core, err := BuildImage(context.Background(), ImageSpec{Platform: PlatformBIOS, Modules: modules})
	if err != nil {
		t.Fatal(err)
	}
	bootImg, err := ReadBootImage("")
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Find(disk.LabelBIOS)
	if err != nil {
		t.Fatal(err)
	}
	if err := BIOS(d.Whole(), r.Partition, core, bootImg); err != nil {
		t.Fatal(err)
	}
}

// console is QEMU's serial output, as it comes.
type console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return grubtest.Console(c.buf.String())
}

// seaBIOS is a QEMU booting a disk image from SeaBIOS.
type seaBIOS struct {
	g     *vm.Guest
	out   *console
	start time.Time
}

// bootBIOS starts QEMU on img with QEMU's default firmware, SeaBIOS.
func bootBIOS(t *testing.T, img string) *seaBIOS {
	t.Helper()
	if _, err := exec.LookPath(vm.QEMU); err != nil {
		t.Fatalf("%s is not installed: %s", vm.QEMU, vm.Fix)
	}
	if _, err := os.Stat("/usr/share/seabios/bios-256k.bin"); err != nil {
		t.Fatalf("SeaBIOS is missing (%v): %s", err, vm.Fix)
	}
	out := &console{}
	cmd := exec.Command(vm.QEMU,
		"-machine", "q35", "-accel", "tcg", "-m", "256",
		"-name", vm.Marker+",process="+vm.Marker,
		"-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
		"-drive", "if=none,id=disk0,format=raw,file="+vm.OptValue(img),
		"-device", "virtio-blk-pci,drive=disk0",
		"-serial", "stdio")
	cmd.Stdout, cmd.Stderr = out, out
	g, err := vm.Launch(context.Background(), cmd, 1, "grub "+t.Name(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	s := &seaBIOS{g: g, out: out, start: time.Now()}
	t.Cleanup(func() {
		s.kill(t)
		t.Logf("QEMU (SeaBIOS) ran %s; its serial console:\n%s", time.Since(s.start).Round(100*time.Millisecond), out)
	})
	return s
}

// expect waits for the console to match re and returns the submatches.
func (s *seaBIOS) expect(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(qemuTimeout)
	for {
		exited := s.exited(0) // before the last look: what it wrote is in
		if m := re.FindStringSubmatch(s.out.String()); m != nil {
			return m
		}
		if exited {
			t.Fatalf("QEMU exited (%v) before the console matched %q", s.g.Err, re)
		}
		time.Sleep(100 * time.Millisecond)
		if time.Now().After(deadline) {
			t.Fatalf("the console did not match %q within %s", re, qemuTimeout)
		}
	}
}

// exited waits up to d for QEMU to exit and tells whether it did.
func (s *seaBIOS) exited(d time.Duration) bool {
	select {
	case <-s.g.Exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill kills QEMU by its pid if it still runs, and waits for it.
func (s *seaBIOS) kill(t *testing.T) {
	if s.exited(0) {
		return
	}
	if err := s.g.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("killing QEMU (pid %d): %v", s.g.Cmd.Process.Pid, err)
	}
	if !s.exited(10 * time.Second) {
		t.Errorf("QEMU (pid %d) did not exit after SIGKILL", s.g.Cmd.Process.Pid)
	}
}

// TestQEMUBIOS boots BIOS's GRUB from SeaBIOS: boot.img in the MBR
// loads the core image from the BIOS boot partition, which finds grub.cfg
// on partition 1 of the boot drive (BIOSPrefix) and runs it.
func TestQEMUBIOS(t *testing.T) {
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	t.Run("grub.cfg", func(t *testing.T) {
		img, d, _ := newGRUBDisk(t, map[string][]byte{"/grub/grub.cfg": []byte(okCfg)})
		installBIOS(t, d, testModules(PlatformBIOS))
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		s := bootBIOS(t, img)
		m := s.expect(t, okRE)
		if m[1] != "(hd0,gpt1)/grub" || m[2] != "hd0,gpt1" {
			t.Errorf("GRUB ran grub.cfg with prefix %s and root %s, want (hd0,gpt1)/grub and hd0,gpt1", m[1], m[2])
		}
		t.Logf("GRUB ran grub.cfg %s after power on", time.Since(s.start).Round(100*time.Millisecond))
		if !s.exited(20 * time.Second) {
			t.Error("GRUB's halt did not power the machine off")
		}
	})
	// The stagehand grub.cfg, as grub.Loader writes it, with a trial of
	// slot a due: GRUB counts it down with save_env through the BIOS and
	// boots slot a, whose kernel is no kernel (linux refuses it), then
	// falls back to slot b, no kernel either.
	t.Run("stagehand grub.cfg", func(t *testing.T) {
		img, d, esp := newGRUBDisk(t, nil)
		stagehandESP(t, esp, "b", "a", 2)
		installBIOS(t, d, ImageModules(PlatformBIOS))
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		s := bootBIOS(t, img)
		m := s.expect(t, partUUIDRE)
		if want := espGUID(t, img); m[1] != "hd0,gpt1" || m[2] != want {
			t.Errorf("the script found itself on %s, partition GUID %s; want hd0,gpt1, %s", m[1], m[2], want)
		}
		m = s.expect(t, choiceRE)
		if m[1] != "a" || m[2] != grub.ModeTrial {
			t.Errorf("the script chose slot %s (%s), want a (trial)", m[1], m[2])
		}
		s.expect(t, regexp.MustCompile(`Failed to boot both default and fallback entries`))
		s.kill(t)
		if got := triesLeft(t, img); got != "1" {
			t.Errorf("grubenv's %s after the boot: %q, want 1", grub.VarTries, got)
		}
	})
}

// TestQEMUEFI boots EFI's GRUB from OVMF: the firmware starts
// EFI/BOOT/BOOTX64.EFI, which finds /grub/grub.cfg on the partition it was
// loaded from (EFIPrefix) and runs it.
func TestQEMUEFI(t *testing.T) {
	grubtest.LookTool(t, "grub-mkimage", "grub-common")
	if err := vm.CheckHost(vm.OVMF); err != nil {
		t.Fatal(err)
	}
	t.Run("grub.cfg", func(t *testing.T) {
		img, d, esp := newGRUBDisk(t, map[string][]byte{"/grub/grub.cfg": []byte(okCfg)})
		if err := EFI(context.Background(), esp, ImageSpec{Modules: testModules(PlatformEFI)}); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		r := bootEFI(t, img)
		sub := expectEFI(t, r, okRE)
		if sub[1] != "(hd0,gpt1)/grub" || sub[2] != "hd0,gpt1" {
			t.Errorf("GRUB ran grub.cfg with prefix %s and root %s, want (hd0,gpt1)/grub and hd0,gpt1", sub[1], sub[2])
		}
		t.Logf("GRUB ran grub.cfg %s after power on", r.Elapsed().Round(100*time.Millisecond))
		if err := r.Wait(20 * time.Second); err != nil {
			t.Errorf("GRUB's halt did not power the machine off: %v", err)
		}
	})
	// As TestQEMUBIOS's: save_env through UEFI's block I/O.
	t.Run("stagehand grub.cfg", func(t *testing.T) {
		img, d, esp := newGRUBDisk(t, nil)
		stagehandESP(t, esp, "a", "b", 1)
		if err := EFI(context.Background(), esp, ImageSpec{}); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		r := bootEFI(t, img)
		m := expectEFI(t, r, partUUIDRE)
		if want := espGUID(t, img); m[1] != "hd0,gpt1" || m[2] != want {
			t.Errorf("the script found itself on %s, partition GUID %s; want hd0,gpt1, %s", m[1], m[2], want)
		}
		m = expectEFI(t, r, choiceRE)
		if m[1] != "b" || m[2] != grub.ModeTrial {
			t.Errorf("the script chose slot %s (%s), want b (trial)", m[1], m[2])
		}
		// GRUB writes to the serial port and to the firmware's console,
		// which OVMF copies to it too: the two copies of a line may come
		// word by word, one into the other. This one comes whole.
		expectEFI(t, r, regexp.MustCompile(`Failed to boot both default and fallback entries`))
		if err := r.Kill(); err != nil {
			t.Fatal(err)
		}
		if got := triesLeft(t, img); got != "0" {
			t.Errorf("grubenv's %s after the boot: %q, want 0", grub.VarTries, got)
		}
	})
}

// bootEFI starts QEMU on img with OVMF (qemu-tests/vm's machine).
func bootEFI(t *testing.T, img string) *vm.Run {
	t.Helper()
	m, err := vm.New(vm.Config{Dir: t.TempDir(), Disk: img, MemoryMB: 256, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Kill(); err != nil {
			t.Error(err)
		}
		t.Logf("QEMU (OVMF) ran %s; its serial console:\n%s", r.Elapsed().Round(100*time.Millisecond),
			grubtest.Console(r.Tail(40)))
	})
	return r
}

func expectEFI(t *testing.T, r *vm.Run, re *regexp.Regexp) []string {
	t.Helper()
	m, err := r.Expect(context.Background(), qemuTimeout, re)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
