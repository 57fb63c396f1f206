package bootdisk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/grub"
	"github.com/stagehand-dev/stagehand/grub/install"
	"github.com/stagehand-dev/stagehand/meta"
)

const mib = 1 << 20

// AdoptConfig is what Adopt installs.
type AdoptConfig struct {
	Bootloader string // GRUBBIOS or GRUBEFI
	Kernel     string // slot a's kernel (bzImage)
	Initramfs  string // slot a's initramfs
	Cmdline    string // kernel command line (stagehand.slot= is added)
	Version    string // slot a's OS version; "" for the kernel's release
	// StageSize is a new STAGE's size: 0 for disk.DefaultStageSize, or,
	// when the free space holds less, the most it holds, if that is
	// twice the payload (kernel and initramfs) or more.
	StageSize int64
	ESPSize   int64 // a new ESP's size; 0 for disk.DefaultESPSize
	DryRun    bool  // check everything and say what would be done; write nothing
}

// AdoptInfo says what Adopt did, or would do (DryRun).
type AdoptInfo struct {
	Path       string
	Bootloader string
	DryRun     bool
	Steps      []string         // the plan, one line each, in order
	Partitions []disk.Partition // the partitions after (as they would be with DryRun)
	ESP        disk.Partition
	Version    string // slot a's version
	Kernel     string // slot a's kernel release
	// EFIBootEntry is, for grub-efi, the efibootmgr command that makes the
	// firmware boot stagehand's GRUB first: Adopt writes no firmware
	// variables, and a machine with a boot entry for its distribution's
	// loader boots that one before the removable path.
	EFIBootEntry string
}

// Adopt makes path (an image file or a whole-disk block device), a GPT
// disk another tool made, a stagehand disk booted by GRUB, without moving
// any partition: every partition keeps its place, type, GUID and name (but
// for the ESP's name, which becomes disk.LabelESP, by which stagehand
// finds it), and what stagehand lacks is added in the largest free extent,
// 1 MiB aligned: META, STAGE, an ESP when the disk has no EFI system
// partition, and for grub-bios a BIOS boot partition when it has none. An
// ESP there already is reused, its files left as they are, when it is a
// FAT32 with room for two slots.
//
// GRUB's files and slot a go on the ESP (grub.Loader: InstallLoader,
// InstallSlot, SetDefault); grub-bios then writes the core image into the
// BIOS boot partition and the MBR's boot code last (install.BIOS), and
// grub-efi puts GRUB at the ESP's removable path (install.EFI); META
// last records slot a good and active.
//
// Every check comes before the first write: the inputs, GRUB's image, the
// table, the free space, the ESP's file system and room, and, on a block
// device, that the ESP is not mounted (the new partitions cannot be; others
// may be). With DryRun nothing more is done. Otherwise the new partitions'
// contents are written first, into space no partition holds yet (a new ESP
// formatted, META formatted, STAGE's first MiB zeroed), then the GPT once,
// backup and primary (disk.WriteGPT), then the ESP, GRUB's boot code and
// META. An adopt cut short after the GPT was written is finished by
// running it again: a META without stagehand's slot record beside a STAGE
// is taken as one it wrote. A META another system wrote in stagehand's
// format (Talos's, without a slot record) is reused, its records kept.
func Adopt(ctx context.Context, path string, cfg AdoptConfig) (*AdoptInfo, error) {
	if cfg.Bootloader != GRUBBIOS && cfg.Bootloader != GRUBEFI {
		return nil, fmt.Errorf("bootloader %q: adopt installs GRUB, %s or %s", cfg.Bootloader, GRUBBIOS, GRUBEFI)
	}
	for _, s := range []struct {
		name string
		v    int64
	}{{"STAGE size", cfg.StageSize}, {"ESP size", cfg.ESPSize}} {
		if s.v < 0 || s.v%mib != 0 {
			return nil, fmt.Errorf("%s %d is not a whole number of MiB", s.name, s.v)
		}
	}
	if cfg.ESPSize != 0 && cfg.ESPSize < disk.MinESPSize {
		return nil, fmt.Errorf("ESP size %d MiB is below the minimum of %d MiB", cfg.ESPSize/mib, disk.MinESPSize/mib)
	}
	if strings.ContainsAny(cfg.Cmdline, "\r\n\x00") {
		return nil, fmt.Errorf("the kernel command line %q spans lines", cfg.Cmdline)
	}
	if strings.ContainsAny(cfg.Version, "\r\n\x00") {
		return nil, fmt.Errorf("the version %q spans lines", cfg.Version)
	}
	img, payload, release, err := slotInputs(Config{Kernel: cfg.Kernel, Initramfs: cfg.Initramfs, Cmdline: cfg.Cmdline})
	if err != nil {
		return nil, err
	}
	defer img.close()
	version := cfg.Version
	if version == "" {
		version = release
	}
	img.Image.Version = version
	if err := grub.CheckImage(meta.SlotA, img.Image); err != nil {
		return nil, err
	}

	d, err := openForAdopt(ctx, path, !cfg.DryRun)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	g, err := d.ReadGPT()
	if err != nil {
		return nil, err
	}
	p, err := planAdopt(d, g, cfg, payload)
	if err != nil {
		return nil, err
	}

	// GRUB's image, built now that the ESP's number is known: the BIOS
	// core image names it in its prefix.
	var core, bootImg, efiImg []byte
	biosSpec := install.ImageSpec{Platform: install.PlatformBIOS, Prefix: fmt.Sprintf("(,gpt%d)/grub", p.esp.Index)}
	efiSpec := install.ImageSpec{Platform: install.PlatformEFI}
	switch cfg.Bootloader {
	case GRUBBIOS:
		if d.SectorSize() != 512 {
			return nil, fmt.Errorf("%s has %d-byte sectors, and GRUB boots from a BIOS with 512-byte sectors only: use --bootloader grub-efi", path, d.SectorSize())
		}
		if core, err = install.BuildImage(ctx, biosSpec); err != nil {
			return nil, err
		}
		if bootImg, err = install.ReadBootImage(""); err != nil {
			return nil, err
		}
		if n := int64(len(core)); n > p.bios.Size {
			return nil, fmt.Errorf("GRUB's core image (%d KiB) does not fit in BIOS boot partition %d (%d KiB): delete it (sgdisk -d %d %s) to have adopt make one of 1 MiB",
				(n+1023)/1024, p.bios.Index, p.bios.Size/1024, p.bios.Index, path)
		}
	case GRUBEFI:
		if efiImg, err = install.BuildImage(ctx, efiSpec); err != nil {
			return nil, err
		}
	}
	loaderSize := int64(len(efiImg))

	// Room for both slots, and two copies of the loader while it is
	// replaced, on the ESP; two payloads in STAGE.
	need := 2*payload + 2*loaderSize
	if p.esp.new {
		if need+8*mib > p.esp.Size {
			return nil, fmt.Errorf("kernel and initramfs (%d MiB) are too large for a %d MiB ESP holding two slots: give a larger --esp-size",
				payload/mib, p.esp.Size/mib)
		}
	} else if err := checkESP(d, p, need+4*mib); err != nil {
		return nil, err
	}
	if !p.stage.new && p.stage.Size < 2*payload {
		return nil, fmt.Errorf("STAGE (partition %d) of %d MiB is less than twice the payload of %d MiB (kernel and initramfs): it was made for smaller payloads",
			p.stage.Index, p.stage.Size/mib, payload/mib)
	}

	info := &AdoptInfo{Path: path, Bootloader: cfg.Bootloader, DryRun: cfg.DryRun, ESP: p.esp.Partition, Version: version, Kernel: release}
	info.Steps = p.steps(d, cfg, biosSpec.Prefix, version, release, payload)
	if cfg.Bootloader == GRUBEFI {
		dev := path
		if !d.IsBlockDevice() {
			dev = "DISK" // the image file is not the machine's disk
		}
		info.EFIBootEntry = fmt.Sprintf(`efibootmgr -c -d %s -p %d -L stagehand -l '\EFI\BOOT\BOOTX64.EFI'`, dev, p.esp.Index)
	}
	if cfg.DryRun {
		for _, e := range g.Entries() {
			info.Partitions = append(info.Partitions, e.Partition)
		}
		return info, nil
	}

	// From here on the disk changes. First what lies in space no
	// partition holds yet: a cut leaves the table as it was.
	for _, e := range p.added {
		r, err := d.Region(e.Partition)
		if err != nil {
			return nil, err
		}
		switch e.Label {
		case disk.LabelESP:
			if _, err := fat.Format(r, r.Size, boot.ESPLabel); err != nil {
				return nil, fmt.Errorf("%s: %w", r.Name(), err)
			}
		case disk.LabelMETA:
			if _, err := meta.Format(r, r.Name()); err != nil {
				return nil, err
			}
		default: // STAGE, BIOS boot: no old signature shows through
			if err := r.Zero(0, min(r.Size, mib)); err != nil {
				return nil, err
			}
		}
	}
	if err := d.Sync(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if p.writeGPT(g) {
		if err := d.WriteGPT(g); err != nil {
			return nil, err
		}
	}

	// The ESP: GRUB's configuration and slot a.
	espR, err := d.Find(disk.LabelESP)
	if err != nil {
		return nil, err
	}
	esp, err := fat.Open(espR, espR.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", espR.Name(), err)
	}
	// No running command line to pass on: stagehand has not booted here.
	if err := installSlotA(ctx, grub.New(esp, grub.WithCmdline("")), esp, img.Image); err != nil {
		return nil, fmt.Errorf("%s: %w", espR.Name(), err)
	}
	// What makes the firmware start stagehand's GRUB comes last, once
	// everything it reads is on the ESP.
	switch cfg.Bootloader {
	case GRUBEFI:
		if err := install.EFI(ctx, esp, efiSpec); err != nil {
			return nil, fmt.Errorf("%s: %w", espR.Name(), err)
		}
	case GRUBBIOS:
		if err := install.BIOS(d.Whole(), p.bios.Partition, core, bootImg); err != nil {
			return nil, err
		}
	}
	// META last: it says slot a is good once slot a is written.
	metaR, err := d.META()
	if err != nil {
		return nil, err
	}
	store, err := meta.Load(metaR, metaR.Name())
	if err != nil {
		return nil, err
	}
	if err := recordSlotA(store, version, "adopted: disk converted by stager disk adopt, slot a ("+version+")"); err != nil {
		return nil, err
	}
	info.Partitions = d.Partitions()
	// The kernel learns of the new partitions: BLKRRPART fails while a
	// partition of the disk is mounted (the running system's root), and
	// then they are added one by one.
	if err := d.RereadPartitions(); err != nil {
		ours := []disk.Partition{p.esp.Partition, p.meta.Partition, p.stage.Partition}
		if p.bios.Index != 0 {
			ours = append(ours, p.bios.Partition)
		}
		if err2 := d.AddKernelPartitions(ours); err2 != nil {
			return info, fmt.Errorf("the disk is adopted, but the kernel does not know its new partitions (%v; %v): run `partprobe %s` or reboot", err, err2, path)
		}
	}
	return info, nil
}

// openForAdopt opens path and locks it (exclusively to write), with a line
// saying what to do when it has an MBR and no GPT.
func openForAdopt(ctx context.Context, path string, writable bool) (*disk.Disk, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d/partition", unix.Major(st.Rdev), unix.Minor(st.Rdev))); err == nil {
			return nil, fmt.Errorf("%s is a partition: give the whole disk", path)
		}
	}
	d, err := disk.Open(path, writable)
	if errors.Is(err, disk.ErrNotStagehand) {
		mbr := make([]byte, 512)
		f, ferr := os.Open(path)
		if ferr == nil {
			_, ferr = io.ReadFull(f, mbr)
			f.Close()
		}
		switch {
		case ferr == nil && disk.HasMBRPartitions(mbr):
			return nil, fmt.Errorf("%s has an MBR partition table and no GPT: convert it to GPT first (sgdisk -g %s), stagehand needs GPT", path, path)
		case ferr == nil && disk.HasGPTMBR(mbr):
			return nil, fmt.Errorf("%s has a protective MBR but no valid GPT: repair it first (sgdisk -v %s says what is wrong)", path, path)
		}
		return nil, fmt.Errorf("%s has no partition table: there is nothing to adopt; make a new disk with `stager disk init`", path)
	}
	if err != nil {
		return nil, err
	}
	// An ESP that systemd automounts is mounted now, before the lock:
	// checkESP's look (MountPoint) triggers automounts, and udev does not
	// process the events of a disk locked exclusively, so that a mount
	// triggered under the lock could wait for its device node until it
	// times out.
	if g, err := d.ReadGPT(); err == nil {
		for _, e := range g.Entries() {
			if e.Type == disk.TypeESP {
				d.MountPoint(e.Index)
			}
		}
	}
	lctx, cancel := context.WithTimeout(ctx, disk.LockTimeout)
	err = d.Lock(lctx, writable)
	cancel()
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// adoptPart is a partition Adopt uses: one there already, or one it adds.
type adoptPart struct {
	disk.GPTEntry
	new bool
}

// adoptPlan is what Adopt reuses and adds.
type adoptPlan struct {
	entries          []disk.GPTEntry // the partitions there already
	esp, meta, stage adoptPart
	bios             adoptPart // grub-bios only
	added            []disk.GPTEntry
	renameESP        bool   // the ESP is reused and gets disk.LabelESP
	oldESPName       string // its name before
	cutShort         bool   // META and STAGE there, META without slots: an adopt cut short
	replacesEFI      bool   // the reused ESP has a file at install.EFIRemovablePath
	fromBackup       bool   // disk.GPT's FromBackup
	backupDiffers    bool   // disk.GPT's BackupDiffers
}

// writeGPT tells whether Adopt writes the table: to add or rename, or to
// make its copies whole and the same.
func (p *adoptPlan) writeGPT(g *disk.GPT) bool {
	return len(p.added) > 0 || p.renameESP || g.FromBackup || g.BackupDiffers
}

// planAdopt decides, from the table, what Adopt reuses and adds, and adds
// the new partitions to g (in memory).
func planAdopt(d *disk.Disk, g *disk.GPT, cfg AdoptConfig, payload int64) (*adoptPlan, error) {
	path := d.Path()
	p := &adoptPlan{entries: g.Entries(), fromBackup: g.FromBackup, backupDiffers: g.BackupDiffers}
	var metas, stages, esps, bioses, efiLabelled []disk.GPTEntry
	for _, e := range p.entries {
		switch e.Label {
		case disk.LabelMETA:
			metas = append(metas, e)
		case disk.LabelSTAGE:
			stages = append(stages, e)
		}
		if e.Label == disk.LabelESP && e.Type != disk.TypeESP {
			efiLabelled = append(efiLabelled, e)
		}
		switch e.Type {
		case disk.TypeESP:
			esps = append(esps, e)
		case disk.TypeBIOSBoot:
			bioses = append(bioses, e)
		}
	}

	// META and STAGE: a META in stagehand's format without a slot record
	// is reused (one written by an adopt cut short, or by Talos); one with
	// a slot record is a stagehand disk's.
	switch {
	case len(metas) > 1 || len(stages) > 1:
		return nil, fmt.Errorf("%s is already a stagehand disk, or was: it has %d partitions labelled META and %d labelled STAGE; there is nothing to adopt", path, len(metas), len(stages))
	case len(metas) == 1:
		m := metas[0]
		if m.Size != meta.PartitionSize {
			return nil, fmt.Errorf("%s has a partition labelled META (partition %d) of %d bytes, not stagehand's 1 MiB: rename or delete it first (sgdisk -c or -d)", path, m.Index, m.Size)
		}
		r, err := d.Region(m.Partition)
		if err != nil {
			return nil, err
		}
		store, err := meta.Load(r, r.Name())
		if err != nil {
			return nil, fmt.Errorf("%s is already a stagehand disk, or part of one, with a damaged META: %w", path, err)
		}
		if _, ok := store.Block().Get(meta.TagSlots); ok {
			active := ""
			if s, err := store.Block().Slots(); err == nil {
				active = fmt.Sprintf(", slot %s active", s.Active)
			}
			return nil, fmt.Errorf("%s is already a stagehand disk (META in partition %d%s): there is nothing to adopt", path, m.Index, active)
		}
		p.meta = adoptPart{GPTEntry: m}
		if len(stages) == 1 {
			p.stage = adoptPart{GPTEntry: stages[0]}
			p.cutShort = true
		}
	case len(stages) == 1:
		return nil, fmt.Errorf("%s is already a stagehand disk, or part of one: it has a partition labelled STAGE (partition %d) and no META; rename or delete it first (sgdisk -c or -d)", path, stages[0].Index)
	}
	if len(efiLabelled) > 0 {
		e := efiLabelled[0]
		return nil, fmt.Errorf("%s: partition %d is labelled %s but is no EFI system partition, and stagehand finds its ESP by that name: rename it first (sgdisk -c %d:NAME %s)", path, e.Index, disk.LabelESP, e.Index, path)
	}
	switch len(esps) {
	case 0:
	case 1:
		p.esp = adoptPart{GPTEntry: esps[0]}
		if esps[0].Label != disk.LabelESP {
			p.renameESP, p.oldESPName = true, esps[0].Label
		}
	default:
		return nil, fmt.Errorf("%s has %d EFI system partitions (partitions %d and %d), and stagehand uses one: delete or retype the one not used (sgdisk -t N:8300)", path, len(esps), esps[0].Index, esps[1].Index)
	}
	if cfg.Bootloader == GRUBBIOS {
		switch len(bioses) {
		case 0:
		case 1:
			p.bios = adoptPart{GPTEntry: bioses[0]}
		default:
			return nil, fmt.Errorf("%s has %d BIOS boot partitions (partitions %d and %d), and GRUB's boot code loads one: delete the one not used", path, len(bioses), bioses[0].Index, bioses[1].Index)
		}
	}

	// The sizes of what is added, in the largest free extent.
	espSize := cfg.ESPSize
	if espSize == 0 {
		espSize = disk.DefaultESPSize
	}
	type add struct {
		label, typ string
		size       int64
		part       *adoptPart
	}
	var adds []add
	fixed := int64(0)
	if cfg.Bootloader == GRUBBIOS && p.bios.Index == 0 {
		adds = append(adds, add{disk.LabelBIOS, disk.TypeBIOSBoot, disk.BIOSBootSize, &p.bios})
		fixed += disk.BIOSBootSize
	}
	if p.esp.Index == 0 {
		adds = append(adds, add{disk.LabelESP, disk.TypeESP, espSize, &p.esp})
		fixed += espSize
	}
	if p.meta.Index == 0 {
		adds = append(adds, add{disk.LabelMETA, disk.TypeLinux, meta.PartitionSize, &p.meta})
		fixed += meta.PartitionSize
	}
	var free disk.Extent
	for _, e := range g.Free(mib) {
		if e.Size > free.Size {
			free = e
		}
	}
	minStage := (2*payload + mib - 1) / mib * mib
	if p.stage.Index == 0 {
		stage := cfg.StageSize
		if stage == 0 {
			stage = min(disk.DefaultStageSize, max(free.Size-fixed, 0))
			stage = max(stage, minStage) // too large for the extent: refused below
		}
		if stage < 2*payload {
			return nil, fmt.Errorf("STAGE of %d MiB is less than twice the payload of %d MiB (kernel and initramfs): give a larger --stage-size", stage/mib, payload/mib)
		}
		adds = append(adds, add{disk.LabelSTAGE, disk.TypeLinux, stage, &p.stage})
	}
	total := int64(0)
	var parts []string
	for _, a := range adds {
		total += a.size
		parts = append(parts, fmt.Sprintf("%s %d", a.label, a.size/mib))
	}
	if total > free.Size {
		found := "there is no free space at all"
		if free.Size > 0 {
			found = fmt.Sprintf("the largest free extent is %d MiB at %d MiB", free.Size/mib, free.Offset/mib)
		}
		needs := fmt.Sprintf("%d MiB in one piece (%s, in MiB)", total/mib, strings.Join(parts, " + "))
		if p.stage.Index == 0 && cfg.StageSize == 0 {
			needs = fmt.Sprintf("at least %d MiB in one piece (%s, in MiB: STAGE twice the payload, %d by default)",
				total/mib, strings.Join(parts, " + "), disk.DefaultStageSize/mib)
		}
		hint := "make room at the end of the disk (shrink the last partition, or grow the disk and move the backup GPT there with sgdisk -e)"
		var smaller []string
		if p.stage.Index == 0 && cfg.StageSize > minStage {
			smaller = append(smaller, fmt.Sprintf("--stage-size (at least %d MiB, twice the payload)", minStage/mib))
		}
		if p.esp.Index == 0 && espSize > disk.MinESPSize {
			smaller = append(smaller, fmt.Sprintf("--esp-size (at least %d MiB)", disk.MinESPSize/mib))
		}
		if len(smaller) > 0 {
			hint += ", or give a smaller " + strings.Join(smaller, " or ")
		}
		return nil, fmt.Errorf("%s has no free extent large enough: adopt needs %s, and %s; %s", path, needs, found, hint)
	}
	off := free.Offset
	for _, a := range adds {
		e, err := g.Add(a.label, a.typ, off, a.size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		*a.part = adoptPart{GPTEntry: e, new: true}
		p.added = append(p.added, e)
		off += a.size
	}
	if p.renameESP {
		if err := g.Rename(p.esp.Index, disk.LabelESP); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// checkESP checks a reused ESP without writing to it: not mounted, a FAT32
// with need bytes free, and, unless an adopt cut short wrote them, no
// files where stagehand's GRUB files and slots go.
func checkESP(d *disk.Disk, p *adoptPlan, need int64) error {
	path, e := d.Path(), p.esp
	if mnt, err := d.MountPoint(e.Index); err != nil {
		return err
	} else if mnt != "" {
		return fmt.Errorf("%s: partition %d, the ESP, is mounted on %s: unmount it first (umount %s; if systemd automounts it, stop that first: systemctl stop \"$(systemd-escape -p --suffix=automount %s)\") and run adopt again; adopt writes it directly, and it may be mounted again afterwards",
			path, e.Index, mnt, mnt, mnt)
	}
	r, err := d.Region(e.Partition)
	if err != nil {
		return err
	}
	vol, u, err := fat.View(r, r.Size)
	if err != nil {
		return fmt.Errorf("%s: partition %d, the ESP, holds %v", path, e.Index, err)
	}
	if u.Free < need {
		return fmt.Errorf("%s: partition %d, the ESP, has %d MiB free, and two slots of this payload with GRUB need %d MiB: free space on it, or delete it (its files saved) to have adopt make a new one",
			path, e.Index, u.Free/mib, (need+mib-1)/mib)
	}
	if _, err := vol.ReadFile(install.EFIRemovablePath); err == nil {
		p.replacesEFI = true
	}
	if p.cutShort {
		return nil
	}
	for _, name := range []string{grub.CfgPath, grub.EnvPath, "stagehand"} {
		_, errDir := vol.ReadDir(name)
		_, errFile := vol.ReadFile(name)
		if errors.Is(errDir, fs.ErrNotExist) && errors.Is(errFile, fs.ErrNotExist) {
			continue
		}
		if errDir == nil || errFile == nil {
			return fmt.Errorf("%s: partition %d, the ESP, holds %s where stagehand's goes (another GRUB's?): move it away first, and run adopt again", path, e.Index, name)
		}
		return fmt.Errorf("%s: partition %d, the ESP: reading %s: %w", path, e.Index, name, errFile)
	}
	return nil
}

// steps is the plan, as AdoptInfo.Steps.
func (p *adoptPlan) steps(d *disk.Disk, cfg AdoptConfig, biosPrefix, version, release string, payload int64) []string {
	var s []string
	add := func(format string, a ...any) { s = append(s, fmt.Sprintf(format, a...)) }
	role := func(e disk.GPTEntry) string {
		switch e.Index {
		case p.esp.Index:
			if p.renameESP {
				return fmt.Sprintf("reuse as the ESP, renamed %s (stagehand finds its ESP by that name; its files are kept)", disk.LabelESP)
			}
			return "reuse as the ESP (its files are kept)"
		case p.bios.Index:
			return "reuse: stagehand's GRUB core image replaces the one there"
		case p.meta.Index:
			if p.cutShort {
				return "reuse META (left by an adopt cut short)"
			}
			return "reuse META (its records are kept)"
		case p.stage.Index:
			return "reuse STAGE"
		}
		return "keep as it is"
	}
	for _, e := range p.entries {
		add("partition %d %q (%s, %s at %s): %s", e.Index, e.Label, typeName(e.Type), size(e.Size), size(e.Offset), role(e))
	}
	for _, e := range p.added {
		what := map[string]string{
			disk.LabelBIOS:  "BIOS boot partition, for GRUB's core image",
			disk.LabelESP:   "new ESP (FAT32), for grub.cfg, grubenv and the slots",
			disk.LabelMETA:  "META",
			disk.LabelSTAGE: "STAGE",
		}[e.Label]
		if e.Label == disk.LabelSTAGE && cfg.StageSize == 0 && e.Size < disk.DefaultStageSize {
			what += fmt.Sprintf(" (below the default %s: what the free space holds; payloads up to %s stage)", size(disk.DefaultStageSize), size(e.Size/2/mib*mib))
		}
		add("add partition %d %q: %s, %s at %s", e.Index, e.Label, what, size(e.Size), size(e.Offset))
	}
	switch {
	case len(p.added) > 0 || p.renameESP:
		add("write the GPT (primary and backup) once: the partitions added, no other partition changed")
	case p.fromBackup:
		add("write the primary GPT anew from the backup (a write of the table was cut short)")
	case p.backupDiffers:
		add("write the backup GPT anew from the primary (it differs)")
	}
	if p.esp.new {
		add("format partition %d (ESP) FAT32", p.esp.Index)
	}
	add("write to the ESP (partition %d): %s, %s, slot a in stagehand/a (kernel %s, %d MiB with the initramfs), default slot a",
		p.esp.Index, grub.CfgPath, grub.EnvPath, release, (payload+mib-1)/mib)
	switch cfg.Bootloader {
	case GRUBBIOS:
		add("write GRUB's core image to partition %d (BIOS boot; prefix %s), then GRUB's boot code to the MBR (its partition table kept)", p.bios.Index, biosPrefix)
	case GRUBEFI:
		replace := ""
		if p.replacesEFI {
			replace = ", replacing the loader there"
		}
		add("write GRUB for UEFI to the ESP's removable path %s%s", install.EFIRemovablePath, replace)
	}
	add("write META (partition %d): slot a (%s) good and active", p.meta.Index, version)
	return s
}

// typeName names a partition type for the plan.
func typeName(t string) string {
	if n, ok := map[string]string{
		disk.TypeESP:                           "EFI system",
		disk.TypeBIOSBoot:                      "BIOS boot",
		disk.TypeLinux:                         "Linux file system",
		"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root x86-64",
		"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
		"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
		"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
		"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	}[t]; ok {
		return n
	}
	return "type " + t
}

// size writes a size or offset for the plan: in MiB when it is a whole
// number of them.
func size(n int64) string {
	if n%mib == 0 {
		return fmt.Sprintf("%d MiB", n/mib)
	}
	return fmt.Sprintf("%d bytes", n)
}
