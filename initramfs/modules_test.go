package initramfs

import (
	"bytes"
	"github.com/stagehand-dev/stagehand/initramfs/kmod"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/u-root/u-root/pkg/cpio"
)

func TestParseModinfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Modinfo
		err  string
	}{
		{"virtio_pci", "alias=pci:v00001AF4d*\x00depends=virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio\x00retpoline=Y\x00intree=Y\x00name=virtio_pci\x00vermagic=6.1.0 SMP\x00",
			Modinfo{Name: "virtio_pci", Depends: []string{"virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"}}, ""},
		{"no deps", "depends=\x00name=fat\x00", Modinfo{Name: "fat"}, ""},
		{"no depends key", "name=x\x00", Modinfo{Name: "x"}, ""},
		{"dashes", "depends=dm-mod,dm_mod,crc-t10dif\x00name=dm-crypt\x00", Modinfo{Name: "dm_crypt", Depends: []string{"dm_mod", "crc_t10dif"}}, ""},
		{"padding", "\x00\x00name=a\x00\x00\x00depends=b\x00\x00", Modinfo{Name: "a", Depends: []string{"b"}}, ""},
		{"empty", "", Modinfo{}, ""},
		{"empty dep", "depends=a,,b\x00", Modinfo{}, "empty module name"},
		{"slash", "depends=../a\x00", Modinfo{}, "has character"},
		{"two names", "name=a\x00name=b\x00", Modinfo{}, "two name="},
		{"two depends", "depends=a\x00depends=b\x00", Modinfo{}, "two depends="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseModinfo([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseModinfo = %+v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want, +got):\n%s", d)
			}
		})
	}
}

// kernelModules returns the module tree of the cloud kernel that
// scripts/vm-deps.sh unpacks, failing the test when it is missing.
func kernelModules(t *testing.T) *Modules {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	k := filepath.Join(filepath.Dir(file), "..", "build", "kernels", "cloud")
	rel, err := os.ReadFile(filepath.Join(k, "release"))
	if err != nil {
		t.Fatalf("no Debian kernel in %s (%v): run 'make deps' (scripts/vm-deps.sh) as root", k, err)
	}
	m, err := OpenModules(filepath.Join(k, "lib", "modules", strings.TrimSpace(string(rel))))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDebianModules resolves real modules of the Debian kernel, which ships
// no modules.dep, and checks the archive's modules.dep and load order.
func TestDebianModules(t *testing.T) {
	tree := kernelModules(t)
	a := New()
	mods, err := a.AddModules(tree, "virtio_blk", "virtio-pci", "vfat")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range mods {
		got = append(got, m.Name)
	}
	want := []string{"virtio_ring", "virtio", "virtio_blk", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "fat", "vfat"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("resolved modules (-want, +got):\n%s", d)
	}
	var b bytes.Buffer
	if _, err := a.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	root := "lib/modules/" + tree.Release() + "/"
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	for _, m := range mods {
		if _, ok := byName[root+m.Path]; !ok {
			t.Errorf("%s missing from the archive", root+m.Path)
		}
	}
	if _, ok := byName[root+"modules.builtin"]; !ok {
		t.Error("modules.builtin missing")
	}
	depRec, ok := byName[root+"modules.dep"]
	if !ok {
		t.Fatal("modules.dep missing")
	}
	raw := make([]byte, depRec.FileSize)
	depRec.ReadAt(raw, 0)
	dep, err := kmod.ParseDep(raw)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"}, dep["kernel/drivers/block/virtio_blk.ko"]); d != "" {
		t.Errorf("virtio_blk's line (-want, +got):\n%s", d)
	}
	order, err := dep.LoadOrder()
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[p] = i
	}
	for m, deps := range dep {
		for _, d := range deps {
			if pos[d] > pos[m] {
				t.Errorf("load order has %s after %s, which needs it", d, m)
			}
		}
	}
	if len(order) != len(mods) {
		t.Errorf("load order has %d modules, want %d", len(order), len(mods))
	}
	if _, err := tree.Resolve("no_such_module"); err == nil || !strings.Contains(err.Error(), "not in") {
		t.Errorf("Resolve(no_such_module) = %v", err)
	}
}
