// Package disktest makes stagehand disks for tests: GPT image files with
// the partitions asked for, and loop devices over them.
package disktest

import (
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// Part is a partition to create; Size in bytes, a multiple of 512.
type Part struct {
	Label string
	Size  int64
}

// MiB is a mebibyte.
const MiB = 1 << 20

// Layout is the smallest stagehand layout: ESP, META, STAGE.
func Layout() []Part {
	return []Part{{"EFI", 260 * MiB}, {"META", MiB}, {"STAGE", 16 * MiB}}
}

// Image creates a sparse GPT image file at path holding parts, 1 MiB
// aligned, and returns its path.
func Image(t testing.TB, path string, parts []Part) string {
	t.Helper()
	table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true}
	start := int64(MiB)
	for i, p := range parts {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: i + 1,
			Start: uint64(start / 512),
			End:   uint64((start+p.Size)/512 - 1),
			Size:  uint64(p.Size),
			Type:  gpt.LinuxFilesystem,
			Name:  p.Label,
		})
		start += p.Size
	}
	size := start + MiB
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := table.Write(f, size); err != nil {
		t.Fatalf("writing GPT to %s: %v", path, err)
	}
	return path
}

// Loop attaches path to a free loop device with partition scanning and
// detaches it when the test ends. It fails the test (never skips) when loop
// devices cannot be used: the tests run as root.
func Loop(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s (loop-device tests need root and util-linux's losetup)", path, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// Sum is the SHA-256 of the file at path: what a test compares to say a
// refusal left a disk image byte for byte as it was.
func Sum(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}
