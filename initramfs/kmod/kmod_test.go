package kmod

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOrder(t *testing.T) {
	dep, err := ParseDep([]byte(`kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/fs/nls/nls_cp437.ko:
`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := dep.Order("virtio_pci", "virtio-blk")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want, +got):\n%s", diff)
	}
	if _, err := dep.Order("virtio_blk", "ext4", "zfs"); err == nil || !strings.Contains(err.Error(), "no ext4, zfs") {
		t.Errorf("missing modules: %v", err)
	}
}

func TestModulesDep(t *testing.T) {
	in := "kernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/b.ko kernel/a.ko\nkernel/a.ko:\n"
	m, err := ParseDep([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(m.Marshal()); got != "kernel/a.ko:\nkernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/b.ko kernel/a.ko\n" {
		t.Errorf("Marshal = %q", got)
	}
	order, err := m.LoadOrder()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"kernel/a.ko", "kernel/b.ko", "kernel/c.ko"}, order); d != "" {
		t.Errorf("LoadOrder (-want, +got):\n%s", d)
	}
	for _, bad := range []string{"nocolon\n", "a.ko: b.ko\na.ko:\n", ": x\n", "a b.ko:\n"} {
		if _, err := ParseDep([]byte(bad)); err == nil {
			t.Errorf("ParseDep(%q) succeeded", bad)
		}
	}
	if _, err := (Dep{"a.ko": {"b.ko"}}).LoadOrder(); err == nil {
		t.Error("LoadOrder with a missing dependency line succeeded")
	}
}

// FuzzModulesDep: whatever ParseDep accepts marshals to a file that
// parses to the same map, and LoadOrder never loads a module twice.
func FuzzModulesDep(f *testing.F) {
	f.Add([]byte("kernel/a.ko:\nkernel/b.ko: kernel/a.ko\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseDep(b)
		if err != nil {
			return
		}
		again, err := ParseDep(m.Marshal())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", m.Marshal(), err)
		}
		if d := cmp.Diff(m, again, cmp.Transformer("nilEmpty", func(s []string) []string {
			if len(s) == 0 {
				return nil
			}
			return s
		})); d != "" {
			t.Fatalf("round trip (-first, +second):\n%s", d)
		}
		order, err := m.LoadOrder()
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range order {
			if seen[p] {
				t.Fatalf("%s loaded twice", p)
			}
			seen[p] = true
		}
	})
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"vfat":            "vfat",
		"virtio-blk":      "virtio_blk",
		"virtio_blk.ko":   "virtio_blk",
		"nls-cp437.ko.xz": "nls_cp437",
		"efivarfs.ko.zst": "efivarfs",
		"crc32c.ko.gz":    "crc32c",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
	if got := pathName("kernel/fs/fat/vfat.ko"); got != "vfat" {
		t.Errorf("pathName = %q, want vfat", got)
	}
}
