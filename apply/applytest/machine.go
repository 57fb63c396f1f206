package applytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/stage"
	"github.com/stagehand-dev/stagehand/systemdboot"
)

// Layout is the disk of a simulated machine: room for two slots of a few
// disktest.MiB each on the ESP, and a STAGE for two payloads.
var Layout = disk.Layout{Size: 300 * disktest.MiB, ESPSize: 260 * disktest.MiB, StageSize: 32 * disktest.MiB}

// Machine is a stagehand disk image with its EFI variables: what survives
// a reboot. Firmware plays the firmware and the bootloader: systemd-boot
// (the boot-once slot if set, and consumed, else the default), or GRUB
// running stagehand's grub.cfg (grub.Choose: the trial while it has tries,
// counted down in grubenv, else the default).
type Machine struct {
	T    testing.TB
	Img  string     // the disk image
	Vars efivar.Dir // the EFI variables, one file each
	Dir  string     // a directory of the machine's own for inputs
	Now  time.Time  // the clock of the next Open, advanced a minute each

	// Bootloader is the one the disk boots with, as bootdisk.Init names
	// them: "" or bootdisk.SystemdBoot, bootdisk.GRUBBIOS (a legacy BIOS:
	// the OS sees no EFI variables) or bootdisk.GRUBEFI.
	Bootloader string
	// GRUBBoot is, on GRUB, the running boot's stagehand.grub= value
	// (MODE:WANT:RAN: the choice GRUB made at the last firmware start,
	// which a kexec passes on); "" before the machine's first Firmware,
	// or for a kernel GRUB did not start.
	GRUBBoot string
	// grubPartUUID is the ESP's partition GUID, which GRUB's script
	// passes as stagehand.partuuid= with GRUBBoot.
	grubPartUUID string

	// V2Kernel and V2Initrd are the bytes New staged as v2.
	V2Kernel, V2Initrd []byte

	// ReadOnlyVars makes it firmware that takes no variable writes at
	// run time: the OS's (every Open's) are refused as efivarfs refuses
	// them (NoRuntimeWrites); the firmware's and the loader's own, in
	// Firmware, still land.
	ReadOnlyVars bool

	// OnFirmware, when set, is called with the open disk and each slot
	// Firmware starts, before the boot is recorded: the crash-state checker
	// reads the slot's files there, as the real firmware would load them.
	OnFirmware func(d *apply.Disk, slot meta.Slot)
}

// New makes a machine with v1 in slot a (as stager disk init does) and v2
// staged through the real stager path, from an OCI layout.
func New(t testing.TB) *Machine {
	t.Helper()
	return NewOn(t, bootdisk.SystemdBoot)
}

// NewOn is New on a disk that boots with bootloader (Machine.Bootloader).
func NewOn(t testing.TB, bootloader string) *Machine {
	t.Helper()
	m := NewDiskOn(t, "v1", bootloader)
	m.V2Kernel, m.V2Initrd = m.StageVersion("v2")
	return m
}

// NewDisk makes a machine with version in slot a and nothing staged.
func NewDisk(t testing.TB, version string) *Machine {
	t.Helper()
	return NewDiskOn(t, version, bootdisk.SystemdBoot)
}

// NewDiskOn is NewDisk on a disk that boots with bootloader
// (Machine.Bootloader).
func NewDiskOn(t testing.TB, version, bootloader string) *Machine {
	t.Helper()
	dir := t.TempDir()
	m := &Machine{T: t, Img: filepath.Join(dir, "disk.img"), Vars: efivar.Dir(t.TempDir()), Dir: dir, Now: time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC), Bootloader: bootloader}
	k, i := m.Inputs(version)
	cfg := bootdisk.Config{
		Layout: Layout,
		Kernel: k, Initramfs: i, Cmdline: "console=ttyS0 rdinit=/prestage", Version: version,
		Bootloader: bootloader,
	}
	if !m.GRUB() {
		cfg.LoaderEFI = k
	}
	if _, err := bootdisk.Init(context.Background(), m.Img, cfg); err != nil {
		t.Fatal(err)
	}
	return m
}

// GRUB tells whether the machine boots with GRUB.
func (m *Machine) GRUB() bool {
	return m.Bootloader == bootdisk.GRUBBIOS || m.Bootloader == bootdisk.GRUBEFI
}

// Cmdline is the command line a kernel booted from slot booted ("" for
// unknown) runs with, as far as the boot flow reads it: stagehand.slot=,
// and on GRUB the stagehand.grub= of the last firmware start, with the
// stagehand.partuuid= the script passes beside it.
func (m *Machine) Cmdline(booted meta.Slot) string {
	var words []string
	if booted != "" {
		words = append(words, boot.SlotParam+"="+string(booted))
	}
	if m.GRUBBoot != "" {
		words = append(words, grub.ChoiceParam+"="+m.GRUBBoot)
		if m.grubPartUUID != "" {
			words = append(words, grub.PartUUIDParam+"="+m.grubPartUUID)
		}
	}
	return strings.Join(words, " ")
}

// vars is the EFI variable store the OS sees: none on a BIOS.
func (m *Machine) vars() efivar.Store {
	switch {
	case m.Bootloader == bootdisk.GRUBBIOS:
		return nil
	case m.ReadOnlyVars:
		return NoRuntimeWrites{Store: m.Vars}
	}
	return m.Vars
}

// Inputs writes a kernel and an initramfs for version into the machine's
// directory, different for each version, and returns their paths.
func (m *Machine) Inputs(version string) (kernel, initramfs string) {
	m.T.Helper()
	n := len(version)
	for _, c := range version {
		n = n*31 + int(c)
	}
	kernel = boottest.FakeKernel(m.T, m.Dir, "6.1.0-"+version, 2*disktest.MiB+n%(disktest.MiB))
	initramfs = filepath.Join(m.Dir, "initrd-"+version)
	if err := os.WriteFile(initramfs, bytes.Repeat([]byte(version+" initramfs "), 40000+n%40000), 0o644); err != nil {
		m.T.Fatal(err)
	}
	return kernel, initramfs
}

// Image builds the installer image of version (Inputs' kernel and
// initramfs); the caller closes it.
func (m *Machine) Image(version string) *installer.Built {
	m.T.Helper()
	k, i := m.Inputs(version)
	img, err := installer.Build(installer.BuildOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0 rdinit=/prestage quiet", Version: version, Arch: "amd64", TempDir: m.Dir})
	if err != nil {
		m.T.Fatal(err)
	}
	return img
}

// StageVersion stages version's installer image from an OCI layout, as
// stager --image oci:DIR:TAG does, and returns its kernel and initramfs.
func (m *Machine) StageVersion(version string) (kernel, initramfs []byte) {
	m.T.Helper()
	img := m.Image(version)
	defer img.Close()
	layout := filepath.Join(m.Dir, "layout-"+version)
	if err := installer.WriteLayout(layout, version, img); err != nil {
		m.T.Fatal(err)
	}
	if _, err := stage.Stage(context.Background(), stage.Options{Disk: m.Img, Image: "oci:" + layout + ":" + version}); err != nil {
		m.T.Fatal(err)
	}
	k, i := m.Inputs(version)
	kernel, _ = os.ReadFile(k)
	initramfs, _ = os.ReadFile(i)
	return kernel, initramfs
}

// StageUKI stages version as an installer image carrying a unified kernel
// image (Inputs' kernel and initramfs in systemd-stub), and returns the
// UKI's bytes.
func (m *Machine) StageUKI(version string) []byte {
	m.T.Helper()
	k, i := m.Inputs(version)
	kb, _ := os.ReadFile(k)
	ib, _ := os.ReadFile(i)
	u := boottest.UKI(m.T, kb, ib, "console=ttyS0 rdinit=/prestage", version)
	m.StageUKIBytes(version, u)
	return u
}

// UKIBytes builds a UKI from the real systemd-stub (boottest.UKI).
func UKIBytes(t testing.TB, kernel, initramfs []byte, cmdline, version string) []byte {
	return boottest.UKI(t, kernel, initramfs, cmdline, version)
}

// StageUKIBytes stages an installer image of version whose vmlinuz.efi is u.
func (m *Machine) StageUKIBytes(version string, u []byte) {
	m.T.Helper()
	if err := m.TryStageUKI(version, u); err != nil {
		m.T.Fatal(err)
	}
}

// TryStageUKI is StageUKIBytes returning the stager's error.
func (m *Machine) TryStageUKI(version string, u []byte) error {
	m.T.Helper()
	p := filepath.Join(m.Dir, "uki-"+version+".efi")
	if err := os.WriteFile(p, u, 0o644); err != nil {
		m.T.Fatal(err)
	}
	img, err := installer.Build(installer.BuildOptions{UKI: p, Version: version, Arch: "amd64", TempDir: m.Dir})
	if err != nil {
		m.T.Fatal(err)
	}
	defer img.Close()
	layout := filepath.Join(m.Dir, "layout-"+version)
	if err := installer.WriteLayout(layout, version, img); err != nil {
		m.T.Fatal(err)
	}
	_, err = stage.Stage(context.Background(), stage.Options{Disk: m.Img, Image: "oci:" + layout + ":" + version})
	return err
}

// Open opens the disk as a kernel booted from slot booted sees it ("" for
// unknown), logging to the test.
func (m *Machine) Open(booted meta.Slot) *apply.Disk {
	m.T.Helper()
	return m.OpenVars(booted, m.vars())
}

// OpenVars is Open with another EFI variable store (one that fails, or
// cuts the power, at a chosen change; nil for none). The bootloader's boot
// record is read from Cmdline(booted).
func (m *Machine) OpenVars(booted meta.Slot, vars efivar.Store) *apply.Disk {
	m.T.Helper()
	cmdline := m.Cmdline(booted)
	d, err := apply.OpenWith(context.Background(), m.Img, apply.OpenOptions{Vars: vars, Cmdline: &cmdline})
	if err != nil {
		m.T.Fatal(err)
	}
	d.Booted = booted
	m.Now = m.Now.Add(time.Minute)
	now := m.Now
	d.Now = func() time.Time { return now }
	d.Logf = m.T.Logf
	return d
}

// Firmware returns the slot the firmware and systemd-boot start, counts a
// try of its entry if it counts them, and records the boot in EFI
// variables as systemd-boot 252 does. On GRUB, it runs stagehand's
// grub.cfg instead (firmwareGRUB).
func (m *Machine) Firmware() meta.Slot {
	m.T.Helper()
	if m.GRUB() {
		return m.firmwareGRUB("")
	}
	d := m.OpenVars("", m.Vars)
	ctx := context.Background()
	s, ok, err := d.Loader.BootOnce(ctx)
	if err != nil {
		m.T.Fatal(err)
	}
	if ok {
		if err := d.Loader.ClearBootOnce(ctx); err != nil {
			m.T.Fatal(err)
		}
	} else if s, err = d.Loader.Default(ctx); err != nil {
		m.T.Fatal(err)
	}
	entries, err := d.Loader.Slots(ctx)
	if err != nil {
		m.T.Fatal(err)
	}
	d.Close()
	for _, e := range entries {
		if e.Slot == s && e.Counting && e.Left > 0 {
			m.countTry(e)
		}
	}
	d = m.OpenVars("", m.Vars)
	defer d.Close()
	if m.OnFirmware != nil {
		m.OnFirmware(d, s)
	}
	m.recordBoot(d, s, entries)
	return s
}

// countTry renames a counted entry as systemd-boot does before it boots
// it: one try less left, one more done (stagehand-b+2.conf becomes
// stagehand-b+1-1.conf).
func (m *Machine) countTry(e boot.SlotEntry) {
	m.T.Helper()
	parse := systemdboot.ParseEntryName
	if strings.HasSuffix(e.Description, ".efi") {
		parse = systemdboot.ParseUKIName
	}
	n, err := parse(path.Base(e.Description))
	if err != nil {
		m.T.Fatal(err)
	}
	n.Left, n.Done = n.Left-1, n.Done+1
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
		m.T.Fatal(err)
	}
	if err := esp.Rename(e.Description, path.Join(path.Dir(e.Description), n.String())); err != nil {
		m.T.Fatal(err)
	}
	if err := esp.Sync(); err != nil {
		m.T.Fatal(err)
	}
}

// PickByHand plays a person choosing slot's entry in the boot menu: the
// boot-once variable is left as it is and the boot is recorded. On GRUB the
// script has run before the menu shows, so a trial due is counted as at
// any start, and the boot record says slot's entry ran alone.
func (m *Machine) PickByHand(slot meta.Slot) {
	m.T.Helper()
	if m.GRUB() {
		m.firmwareGRUB(slot)
		return
	}
	d := m.Open("")
	defer d.Close()
	m.RecordBoot(d, slot)
}

// DropBootRecord makes the running boot one the bootloader says nothing
// of: systemd-boot's LoaderEntrySelected removed; on GRUB, no
// stagehand.grub= on the command line (Cmdline).
func (m *Machine) DropBootRecord() {
	m.T.Helper()
	if m.GRUB() {
		m.GRUBBoot = ""
		return
	}
	if err := m.Vars.Remove(systemdboot.SelectedVar, efivar.LoaderVendor); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.T.Fatal(err)
	}
}

// RecordBoot sets the variables systemd-boot 252 sets for a boot of
// slot's entry: LoaderEntrySelected, its file name in lower case, and
// LoaderBootCountPath when it counts tries. On GRUB, it records a boot of
// slot as the good slot (stagehand.grub=good:SLOT:SLOT), grubenv as it is.
func (m *Machine) RecordBoot(d *apply.Disk, slot meta.Slot) {
	m.T.Helper()
	if m.GRUB() {
		m.GRUBBoot = grub.Choice{Mode: grub.ModeGood, Want: slot, Ran: string(slot)}.String()
		return
	}
	entries, err := d.Loader.Slots(context.Background())
	if err != nil {
		m.T.Fatal(err)
	}
	m.recordBoot(d, slot, entries)
}

// recordBoot records a boot of slot's entry as it was named when the
// loader chose it (systemd-boot 252 reports that ID; the count path is the
// file's name after the loader counted the try).
func (m *Machine) recordBoot(d *apply.Disk, slot meta.Slot, chosen []boot.SlotEntry) {
	m.T.Helper()
	now, err := d.Loader.Slots(context.Background())
	if err != nil {
		m.T.Fatal(err)
	}
	const volatile = efivar.BootServiceAccess | efivar.RuntimeAccess
	for i, e := range chosen {
		if e.Slot != slot {
			continue
		}
		name := path.Base(e.Description)
		if err := efivar.SetString(m.Vars, systemdboot.SelectedVar, efivar.LoaderVendor, volatile, strings.ToLower(name)); err != nil {
			m.T.Fatal(err)
		}
		if e.Counting {
			desc := e.Description
			if i < len(now) && now[i].Slot == slot {
				desc = now[i].Description // after the loader counted the try
			}
			err = efivar.SetString(m.Vars, systemdboot.CountPathVar, efivar.LoaderVendor, volatile, `\`+strings.ReplaceAll(desc, "/", `\`))
		} else if err = m.Vars.Remove(systemdboot.CountPathVar, efivar.LoaderVendor); errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		if err != nil {
			m.T.Fatal(err)
		}
		return
	}
	m.T.Fatalf("the firmware boots slot %s, which has no entry", slot)
}

// Prestage runs the pre-stage step for a boot of slot. A kexec decided is
// counted as prestage counts it (boot.KexecCounter: GRUB's trial loses a
// try), the kexec taken as made: the caller boots the slot next, its
// command line carrying this boot's record (Cmdline).
func (m *Machine) Prestage(slot meta.Slot) apply.Decision {
	m.T.Helper()
	d := m.Open(slot)
	defer d.Close()
	ctx := context.Background()
	dec, err := apply.Boot(ctx, &d.Env)
	if err != nil {
		m.T.Logf("Boot: %v", err)
	}
	if dec.Action == apply.Kexec {
		if kc, ok := d.Loader.(boot.KexecCounter); ok {
			if err := kc.CountKexec(ctx, dec.Slot); err != nil {
				m.T.Logf("counting the kexec as a try of slot %s: %v", dec.Slot, err)
			}
		}
	}
	return dec
}

// Confirm runs stager confirm on a system booted from slot.
func (m *Machine) Confirm(slot meta.Slot) (*apply.Result, error) {
	m.T.Helper()
	d := m.Open(slot)
	defer d.Close()
	return apply.Confirm(context.Background(), &d.Env)
}

// Rollback runs stager rollback on a system booted from slot.
func (m *Machine) Rollback(slot meta.Slot) (*apply.Result, error) {
	m.T.Helper()
	d := m.Open(slot)
	defer d.Close()
	return apply.Rollback(context.Background(), &d.Env)
}

// Status reads META as stager status does.
func (m *Machine) Status() *stage.Status {
	m.T.Helper()
	st, err := stage.ReadStatus(context.Background(), m.Img)
	if err != nil {
		m.T.Fatal(err)
	}
	return st
}

// Slots returns META's slot states.
func (m *Machine) Slots() *meta.Slots { m.T.Helper(); return m.Status().Slots }

// Staged returns META's staged record, nil when nothing is staged.
func (m *Machine) Staged() *meta.Staged { m.T.Helper(); return m.Status().Staged }

// LastReason is the reason of META's last transition.
func (m *Machine) LastReason() string {
	m.T.Helper()
	tr := m.Status().Transitions
	if len(tr) == 0 {
		return ""
	}
	return tr[len(tr)-1].Reason
}

// CheckESP runs fsck.fat -n on a copy of the ESP.
func (m *Machine) CheckESP() {
	m.T.Helper()
	if out, err := FsckESP(m.Img, m.T.TempDir()); err != nil {
		m.T.Fatalf("fsck.fat -n on the ESP: %v\n%s", err, out)
	}
}

// FsckESP runs fsck.fat -n on a copy of img's ESP made in dir (a sparse
// copy: only what the image holds), and returns its output.
func FsckESP(img, dir string) ([]byte, error) {
	d, err := disk.Open(img, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	esp, err := d.Find(disk.LabelESP)
	if err != nil {
		return nil, err
	}
	src, err := os.Open(img)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	p := filepath.Join(dir, "esp")
	dst, err := os.Create(p)
	if err != nil {
		return nil, err
	}
	defer os.Remove(p)
	err = dst.Truncate(esp.Size)
	if err == nil {
		err = CopySparse(dst, src, esp.Offset, esp.Size)
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return exec.Command("fsck.fat", "-n", p).CombinedOutput()
}

// ReadSlot reads a slot's files into memory.
func ReadSlot(ctx context.Context, l boot.Loader, slot meta.Slot) (kernel, initramfs []byte, e boot.SlotEntry, err error) {
	f, err := l.OpenSlot(ctx, slot)
	if err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	defer f.Close()
	if kernel, err = io.ReadAll(f.Kernel); err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	if initramfs, err = io.ReadAll(f.Initramfs); err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	return kernel, initramfs, f.Entry, nil
}

// HashFile is the SHA-256 of the file at p.
func HashFile(t testing.TB, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
