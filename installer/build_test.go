package installer

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func inputs(t *testing.T) (string, string) {
	dir := t.TempDir()
	k, i := filepath.Join(dir, "k"), filepath.Join(dir, "i")
	os.WriteFile(k, []byte("kernel bytes"), 0o600)
	os.WriteFile(i, []byte("initramfs bytes"), 0o600)
	return k, i
}

func TestBuildIsReproducible(t *testing.T) {
	k, i := inputs(t)
	digest := func(o BuildOptions) string {
		img, err := Build(o)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if err := validate.Image(img, validate.Fast); err != nil { // the full check assumes gzip layers
			t.Fatalf("invalid image: %v", err)
		}
		d, _ := img.Digest()
		return d.String()
	}
	o := BuildOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0", Version: "v2", Arch: "amd64"}
	a := digest(o)
	os.Chtimes(k, time.Now(), time.Now()) // a file's own times do not leak into the image
	if b := digest(o); a != b {
		t.Errorf("same inputs, different digests: %s and %s", a, b)
	}
	o.Version = "v3"
	if c := digest(o); c == a {
		t.Error("another version gave the same digest")
	}
}

func TestBuildLayout(t *testing.T) {
	k, i := inputs(t)
	img, err := Build(BuildOptions{Kernel: k, Initramfs: i, Cmdline: "quiet", Version: "v9", Arch: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	cfg, _ := img.ConfigFile()
	if cfg.Architecture != "arm64" || cfg.OS != "linux" || cfg.Config.Labels["org.opencontainers.image.version"] != "v9" {
		t.Errorf("config %+v", cfg)
	}
	layers, _ := img.Layers()
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(b)
		if h.Uid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d mtime %v", h.Name, h.Uid, h.ModTime)
		}
	}
	want := map[string]string{
		"usr/": "", "usr/install/": "", "usr/install/arm64/": "",
		"usr/install/arm64/vmlinuz": "kernel bytes", "usr/install/arm64/initramfs.xz": "initramfs bytes",
		"usr/install/arm64/cmdline": "quiet", "usr/install/arm64/version": "v9",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layer (-want, +got):\n%s", diff)
	}
	var names []string
	for p := range Artifacts("arm64") {
		if _, ok := want[p]; !ok && p != "usr/install/arm64/vmlinuz.efi" { // a UKI's, instead of a kernel and initramfs
			t.Errorf("artifact path %s is not in the layer", p)
		}
		names = append(names, p)
	}
	sort.Strings(names)
}

func TestBuildRefusesBadInput(t *testing.T) {
	k, _ := inputs(t)
	for _, o := range []BuildOptions{
		{Kernel: k, Initramfs: "/nonexistent", Arch: "amd64"},
		{Kernel: k, Initramfs: t.TempDir(), Arch: "amd64"},
		{Kernel: k, Initramfs: k},
	} {
		if img, err := Build(o); err == nil {
			img.Close()
			t.Errorf("Build(%+v) succeeded", o)
		}
	}
}
