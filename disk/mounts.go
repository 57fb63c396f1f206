package disk

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountPoint returns where the kernel has partition index of this disk
// mounted, or "" when it is not (always "" for an image file). A mounted
// partition must be written through its mount, never underneath it.
func (d *Disk) MountPoint(index int) (string, error) {
	if !d.block {
		return "", nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", d.path, err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	ents, err := os.ReadDir(sys)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", sys, err)
	}
	// The disk's partitions are the directories named after it (vda1,
	// nvme0n1p1); only those are read, not every attribute: prestage asks
	// at every boot.
	name := ""
	if l, err := os.Readlink(sys); err == nil {
		name = filepath.Base(l)
	}
	dev := ""
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), name) || e.Name() == name {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sys, e.Name(), "partition"))
		if err != nil {
			continue
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n == index {
			b, err := os.ReadFile(filepath.Join(sys, e.Name(), "dev"))
			if err != nil {
				return "", fmt.Errorf("reading %s: %w", e.Name(), err)
			}
			dev = strings.TrimSpace(string(b))
		}
	}
	if dev == "" {
		return "", nil // the kernel has no device for it: it cannot be mounted
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading the mount table: %w", err)
	}
	mnt, autofs := findMount(mi, dev)
	if mnt != "" || len(autofs) == 0 {
		return mnt, nil
	}
	// An automount point where an ESP goes (systemd's x-systemd.automount
	// or gpt-auto) may mount this partition at any moment: trigger it, as
	// bootctl does, and look again, so that the partition is written
	// through the kernel's mount rather than under it.
	trigger(autofs)
	if mi, err = os.ReadFile("/proc/self/mountinfo"); err != nil {
		return "", fmt.Errorf("reading the mount table: %w", err)
	}
	mnt, _ = findMount(mi, dev)
	return mnt, nil
}

// TriggerESPAutomounts mounts what waits at the automount points where an
// ESP goes, as MountPoint does, but is called before the disk is locked:
// udev does not process the events of a disk locked with LOCK_EX (systemd's
// block device locking), so a mount triggered under the lock can wait for
// its device node until it times out (90 s, seen on a legacy BIOS machine
// whose ESP was not mounted yet when udev had just re-read the partition
// table, removing and adding its partitions' nodes).
func TriggerESPAutomounts() {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	_, autofs := findMount(mi, "")
	trigger(autofs)
}

// trigger opens each automount point, which makes the kernel mount it.
func trigger(autofs []string) {
	for _, p := range autofs {
		if f, err := os.Open(p); err == nil {
			f.Readdirnames(1)
			f.Close()
		}
	}
}

// espMountPoints are where an ESP is mounted by convention (bootctl looks
// there too).
var espMountPoints = []string{"/efi", "/boot", "/boot/efi"}

// findMount returns where mountinfo mi has device dev (major:minor)
// mounted whole, and the automount points (autofs) at espMountPoints that
// are not yet mounted over.
func findMount(mi []byte, dev string) (string, []string) {
	var autofs []string
	s := bufio.NewScanner(bytes.NewReader(mi))
	for s.Scan() {
		f := strings.Fields(s.Text()) // id parent major:minor root mountpoint ... - fstype source options
		if len(f) < 5 {
			continue
		}
		if f[2] == dev && f[3] == "/" {
			return unescapeMount(f[4]), nil
		}
		mp := unescapeMount(f[4])
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" {
				if f[i+1] == "autofs" {
					for _, p := range espMountPoints {
						if mp == p {
							autofs = append(autofs, mp)
						}
					}
				}
				break
			}
		}
	}
	return "", autofs
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
