package applytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/meta"
)

// firmwareGRUB plays the firmware starting GRUB on stagehand's grub.cfg:
// the script's choice (grub.Choose) on grubenv as the ESP holds it, the
// count it saves written back in place, as save_env writes it (through
// the file's sectors, durable before the kernel starts), then the wanted
// slot's entry or, when that one does not load, the other's
// (Choice.Run). pick, when set, is the entry a person picks from the menu
// instead, after the script ran. The boot's stagehand.grub= is kept for
// the Opens of this boot and of the kexecs from it (Cmdline). It returns
// the slot booted; a disk GRUB boots nothing from fails the test.
func (m *Machine) firmwareGRUB(pick meta.Slot) meta.Slot {
	m.T.Helper()
	ctx := context.Background()
	var c grub.Choice
	m.onESP(func(r *disk.Region, esp *fat.Volume) {
		m.grubPartUUID = strings.ToLower(r.GUID)
		if err := checkScript(esp); err != nil {
			m.T.Fatalf("GRUB: %v", err)
		}
		env, err := esp.ReadFile(grub.EnvPath)
		if errors.Is(err, fs.ErrNotExist) {
			env = nil
		} else if err != nil {
			m.T.Fatalf("GRUB reads %s: %v", grub.EnvPath, err)
		}
		var newEnv []byte
		c, newEnv = grub.Choose(env, true)
		if newEnv != nil {
			if err := esp.OverwriteFile(grub.EnvPath, 0, newEnv); err != nil {
				m.T.Fatalf("GRUB's save_env: %v", err)
			}
		}
	})
	d := m.OpenVars("", m.vars())
	defer d.Close()
	c, ok := c.Run(func(s meta.Slot) bool {
		err := EntryLoads(ctx, d.Loader, s)
		if err != nil {
			m.T.Logf("GRUB: slot %s's entry does not load: %v", s, err)
		}
		return err == nil
	})
	if !ok {
		m.T.Fatalf("GRUB boots no slot (%s): neither entry loads", c)
	}
	if pick != "" {
		if err := EntryLoads(ctx, d.Loader, pick); err != nil {
			m.T.Fatalf("slot %s, picked in GRUB's menu, does not load: %v", pick, err)
		}
		c.Ran = string(pick)
	}
	m.GRUBBoot = c.String()
	m.T.Logf("GRUB: %s=%s", grub.ChoiceParam, m.GRUBBoot)
	slot := c.Booted()
	if m.OnFirmware != nil {
		m.OnFirmware(d, slot)
	}
	return slot
}

// EntryLoads tells, as an error, why GRUB's entry for slot does not boot
// it: the slot's files as the GRUB backend reads them (its slot.cfg, which
// the entry sources) do not read, or its kernel or initramfs is empty
// (the entry's [ -s ]); nil when it boots.
func EntryLoads(ctx context.Context, l boot.Loader, slot meta.Slot) error {
	f, err := l.OpenSlot(ctx, slot)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, r := range []struct {
		what string
		r    io.Reader
	}{{"kernel", f.Kernel}, {"initramfs", f.Initramfs}} {
		n, err := io.Copy(io.Discard, r.r)
		if err != nil {
			return fmt.Errorf("reading its %s: %w", r.what, err)
		}
		if n == 0 {
			return fmt.Errorf("its %s is empty", r.what)
		}
	}
	return nil
}

// onESP runs fn on the machine's ESP (its partition, and its file
// system opened read-write), then syncs and closes it.
func (m *Machine) onESP(fn func(r *disk.Region, esp *fat.Volume)) {
	m.T.Helper()
	dk, err := disk.Open(m.Img, true)
	if err != nil {
		m.T.Fatal(err)
	}
	defer dk.Close()
	r, err := dk.Find(disk.LabelESP)
	if err != nil {
		m.T.Fatal(err)
	}
	esp, err := fat.Open(r, r.Size)
	if err != nil {
		m.T.Fatalf("the firmware reads the ESP: %v", err)
	}
	fn(r, esp)
	if err := esp.Sync(); err != nil {
		m.T.Fatal(err)
	}
}

var (
	scriptOnce sync.Once
	script     []byte
	scriptErr  error
)

// Script is the grub.cfg the GRUB backend installs (InstallLoader), which
// holds no slot's data: the one a GRUB disk must hold for GRUB to run
// stagehand's choice.
func Script() ([]byte, error) {
	scriptOnce.Do(func() {
		tmp, err := os.MkdirTemp("", "applytest-grub-")
		if err != nil {
			scriptErr = err
			return
		}
		defer os.RemoveAll(tmp)
		dir := boot.Dir(tmp)
		l := grub.New(dir, grub.WithCmdline(""))
		if scriptErr = l.InstallLoader(context.Background()); scriptErr == nil {
			script, scriptErr = dir.ReadFile(grub.CfgPath)
		}
	})
	return script, scriptErr
}

// CheckScript says what is wrong with the grub.cfg fsys holds: missing,
// or not the one the backend installs (Script): cut short, say. GRUB then
// does not run stagehand's choice.
func CheckScript(fsys boot.FS) error { return checkScript(fsys) }

func checkScript(fsys boot.FS) error {
	want, err := Script()
	if err != nil {
		return fmt.Errorf("the script the backend installs: %w", err)
	}
	got, err := fsys.ReadFile(grub.CfgPath)
	if err != nil {
		return fmt.Errorf("reading %s: %w", grub.CfgPath, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s (%d bytes) is not the script the backend installs (%d bytes)", grub.CfgPath, len(got), len(want))
	}
	return nil
}

// DiskBootloader is the bootloader the disk image img boots with, as
// Machine.Bootloader names it: GRUB on a BIOS when the disk has a BIOS
// boot partition (which only bootdisk.GRUBBIOS makes), GRUB on UEFI when
// its ESP holds grub.cfg (as bootloader.Find tells), else systemd-boot.
// img is not changed: the ESP is read from a copy, repaired there if a cut
// left it in need (see fat.Open).
func DiskBootloader(img string) (string, error) {
	dk, err := disk.Open(img, false)
	if err != nil {
		return "", err
	}
	defer dk.Close()
	if _, err := dk.Find(disk.LabelBIOS); err == nil {
		return bootdisk.GRUBBIOS, nil
	}
	r, err := dk.Find(disk.LabelESP)
	if err != nil {
		return "", err
	}
	src, err := os.Open(img)
	if err != nil {
		return "", err
	}
	defer src.Close()
	cp, err := os.CreateTemp("", "applytest-esp-")
	if err != nil {
		return "", err
	}
	defer os.Remove(cp.Name())
	defer cp.Close()
	if err := cp.Truncate(r.Size); err != nil {
		return "", err
	}
	if err := CopySparse(cp, src, r.Offset, r.Size); err != nil {
		return "", err
	}
	esp, err := fat.Open(cp, r.Size)
	if err != nil {
		return "", err
	}
	switch _, err := esp.ReadFile(grub.CfgPath); {
	case err == nil:
		return bootdisk.GRUBEFI, nil
	case errors.Is(err, fs.ErrNotExist):
		return bootdisk.SystemdBoot, nil
	default:
		return "", err
	}
}
