package installer

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/stagehand-dev/stagehand/delta"
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
	build := func(o BuildOptions) (digest, layer0 string) {
		t.Helper()
		img, err := Build(o)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if err := validate.Image(img, validate.Fast); err != nil { // the full check assumes gzip layers
			t.Fatalf("invalid image: %v", err)
		}
		d, _ := img.Digest()
		m, _ := img.Manifest()
		return d.String(), m.Layers[0].Digest.String()
	}
	for _, noIndex := range []bool{false, true} {
		o := BuildOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0", Version: "v2", Arch: "amd64", NoIndex: noIndex}
		a, _ := build(o)
		os.Chtimes(k, time.Now(), time.Now()) // a file's own times do not leak into the image
		o.TempDir = t.TempDir()               // nor does where the layers are assembled
		if b, _ := build(o); a != b {
			t.Errorf("NoIndex %v: same inputs, different digests: %s and %s", noIndex, a, b)
		}
		o.Version = "v3"
		if c, _ := build(o); c == a {
			t.Errorf("NoIndex %v: another version gave the same digest", noIndex)
		}
	}
	// The index layer is added after the artifact layer, which it leaves
	// as it was.
	o := BuildOptions{Kernel: k, Initramfs: i, Arch: "amd64"}
	with, l0 := build(o)
	o.NoIndex = true
	without, l0NoIndex := build(o)
	if with == without || l0 != l0NoIndex {
		t.Errorf("image with and without an index: %s and %s, artifact layers %s and %s", with, without, l0, l0NoIndex)
	}
}

// randomFile writes n pseudo-random bytes (seeded by seed) to a new file.
func randomFile(t *testing.T, seed uint64, n int) string {
	t.Helper()
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildIndex(t *testing.T) {
	k, i := inputs(t)
	bigK, bigI := randomFile(t, 1, 700<<10), randomFile(t, 2, 3<<20)
	cases := []struct {
		name string
		o    BuildOptions
	}{
		{"small", BuildOptions{Kernel: k, Initramfs: i, Cmdline: "quiet", Version: "v1", Arch: "amd64"}},
		{"many chunks", BuildOptions{Kernel: bigK, Initramfs: bigI, Arch: "arm64"}},
		{"uki", BuildOptions{UKI: bigI, Version: "v2", Arch: "amd64"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.TempDir = t.TempDir()
			img, err := Build(c.o)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			m, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Layers) != 2 {
				t.Fatalf("%d layers, want 2", len(m.Layers))
			}
			art, idx := m.Layers[0], m.Layers[1]
			for _, d := range m.Layers {
				if d.MediaType != types.OCIUncompressedLayer {
					t.Errorf("layer %s: media type %s", d.Digest, d.MediaType)
				}
			}
			if len(art.Annotations) != 0 {
				t.Errorf("artifact layer annotations %v", art.Annotations)
			}
			if want := map[string]string{IndexAnnotation: art.Digest.String()}; !cmp.Equal(idx.Annotations, want) {
				t.Errorf("index layer annotations %v, want %v", idx.Annotations, want)
			}
			cfg, _ := img.ConfigFile()
			if want := []v1.Hash{art.Digest, idx.Digest}; !cmp.Equal(cfg.RootFS.DiffIDs, want) {
				t.Errorf("diff IDs %v, want %v", cfg.RootFS.DiffIDs, want)
			}
			if d, of, ok := IndexOf(m); !ok || of != art.Digest || !cmp.Equal(d, idx) {
				t.Errorf("IndexOf = %v, %v, %v; want the second layer, %v", d, of, ok, art.Digest)
			}

			layers, _ := img.Layers()
			blob := readAll(t, layers[0].Compressed)
			x := parseIndexLayer(t, layers[1])
			if x.Size != art.Size || x.Size != int64(len(blob)) || "sha256:"+hex.EncodeToString(x.SHA256[:]) != art.Digest.String() {
				t.Errorf("index of %d bytes, sha256:%x; the layer is %d bytes, %s", x.Size, x.SHA256, art.Size, art.Digest)
			}
			if x.Params != delta.DefaultParams {
				t.Errorf("index params %+v", x.Params)
			}
			want, err := delta.Build(bytes.NewReader(blob), delta.DefaultParams)
			if err != nil {
				t.Fatal(err)
			}
			if !cmp.Equal(x, want) {
				t.Errorf("index differs from the blob's: %d chunks, want %d", len(x.Chunks), len(want.Chunks))
			}
			if c.name == "many chunks" && len(x.Chunks) < 10 {
				t.Errorf("%d chunks for a %d-byte blob", len(x.Chunks), x.Size)
			}

			// The index layer's tar: the directory, then the index, fixed.
			tr := tar.NewReader(bytes.NewReader(readAll(t, layers[1].Uncompressed)))
			var got []string
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, h.Name)
				if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.ModTime.Unix() != 0 || (h.Typeflag == tar.TypeReg && h.Mode != 0o644) {
					t.Errorf("%s: uid %d gid %d uname %q mtime %v mode %o", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime, h.Mode)
				}
			}
			if want := []string{"stagehand/", IndexPath}; !cmp.Equal(got, want) {
				t.Errorf("index layer entries %q, want %q", got, want)
			}

			// The annotation survives an OCI layout, as it does a push.
			dir := t.TempDir()
			if err := WriteLayout(dir, "v", img); err != nil {
				t.Fatal(err)
			}
			p, _ := layout.FromPath(dir)
			ii, _ := p.ImageIndex()
			want0, _ := img.Digest()
			back, err := ii.Image(want0)
			if err != nil {
				t.Fatal(err)
			}
			bm, _ := back.Manifest()
			if _, of, ok := IndexOf(bm); !ok || of != art.Digest {
				t.Errorf("read back from a layout: IndexOf = %v, %v", of, ok)
			}

			// Close removes both layer files.
			if err := img.Close(); err != nil {
				t.Error(err)
			}
			if left, _ := os.ReadDir(c.o.TempDir); len(left) != 0 {
				t.Errorf("left after Close: %v", left)
			}
		})
	}
}

func TestBuildNoIndex(t *testing.T) {
	k, i := inputs(t)
	dir := t.TempDir()
	img, err := Build(BuildOptions{Kernel: k, Initramfs: i, Arch: "amd64", NoIndex: true, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	if len(m.Layers) != 1 || len(m.Layers[0].Annotations) != 0 {
		t.Errorf("layers %+v, want one, unannotated", m.Layers)
	}
	if _, _, ok := IndexOf(m); ok {
		t.Error("IndexOf found an index")
	}
	if err := img.Close(); err != nil {
		t.Error(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left after Close: %v", left)
	}
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseIndexLayer(t *testing.T, l v1.Layer) *delta.Index {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := ReadIndex(rc)
	if err != nil {
		t.Fatal(err)
	}
	x, err := delta.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestIndexOf(t *testing.T) {
	h := func(c byte) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(string(c), 64)} }
	layer := func(c byte) v1.Descriptor {
		return v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: h(c), Size: 10}
	}
	index := func(c byte, of string) v1.Descriptor {
		d := layer(c)
		d.Annotations = map[string]string{IndexAnnotation: of}
		return d
	}
	cases := []struct {
		name   string
		layers []v1.Descriptor
		ok     bool
	}{
		{"index after its layer", []v1.Descriptor{layer('a'), index('b', h('a').String())}, true},
		{"index before its layer", []v1.Descriptor{index('b', h('a').String()), layer('a')}, true},
		{"index of one of several", []v1.Descriptor{layer('a'), layer('c'), index('b', h('c').String())}, true},
		{"no index", []v1.Descriptor{layer('a')}, false},
		{"no layers", nil, false},
		{"two indexes", []v1.Descriptor{layer('a'), index('b', h('a').String()), index('c', h('a').String())}, false},
		{"names a layer not in the manifest", []v1.Descriptor{layer('a'), index('b', h('d').String())}, false},
		{"names itself", []v1.Descriptor{layer('a'), index('b', h('b').String())}, false},
		{"not a digest", []v1.Descriptor{layer('a'), index('b', "a")}, false},
		{"empty value", []v1.Descriptor{layer('a'), index('b', "")}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, of, ok := IndexOf(&v1.Manifest{Layers: c.layers})
			if ok != c.ok {
				t.Fatalf("ok %v, want %v", ok, c.ok)
			}
			if ok && (d.Digest != h('b') || of.String() != d.Annotations[IndexAnnotation]) {
				t.Errorf("IndexOf = %v, %v", d.Digest, of)
			}
			if !ok && (d.Digest != v1.Hash{} || of != v1.Hash{}) {
				t.Errorf("not found, yet IndexOf = %v, %v", d.Digest, of)
			}
		})
	}
	if _, _, ok := IndexOf(nil); ok {
		t.Error("IndexOf(nil) found an index")
	}
}

func TestReadIndex(t *testing.T) {
	type entry struct {
		h    tar.Header
		data string
	}
	dir := entry{h: tar.Header{Typeflag: tar.TypeDir, Name: "stagehand/", Mode: 0o755}}
	file := func(name, data string) entry {
		return entry{h: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}, data: data}
	}
	tarOf := func(es ...entry) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range es {
			if err := tw.WriteHeader(&e.h); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(e.data))
		}
		tw.Close()
		return buf.Bytes()
	}
	var built bytes.Buffer
	if err := writeIndexLayer(&built, []byte("the index")); err != nil {
		t.Fatal(err)
	}
	// A header saying more than the limit, without the data behind it.
	var huge bytes.Buffer
	tw := tar.NewWriter(&huge)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: IndexPath, Mode: 0o644, Size: maxIndexSize + 1})

	cases := []struct {
		name, want string // want: the index, or a piece of the error
		tar        []byte
		ok         bool
	}{
		{"as built", "the index", built.Bytes(), true},
		{"without the directory", "x", tarOf(file(IndexPath, "x")), true},
		{"empty index", "", tarOf(dir, file(IndexPath, "")), true},
		{"an extra file", `unexpected entry "stagehand/other"`, tarOf(dir, file(IndexPath, "x"), file("stagehand/other", "y")), false},
		{"an extra file first", `unexpected entry "usr/install/amd64/vmlinuz"`, tarOf(file("usr/install/amd64/vmlinuz", "k"), dir, file(IndexPath, "x")), false},
		{"another directory", `unexpected entry "usr/"`, tarOf(entry{h: tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}}, dir, file(IndexPath, "x")), false},
		{"the index twice", "appears twice", tarOf(dir, file(IndexPath, "x"), file(IndexPath, "y")), false},
		{"the directory twice", "appears twice", tarOf(dir, dir, file(IndexPath, "x")), false},
		{"the index a symlink", "unexpected entry", tarOf(dir, entry{h: tar.Header{Typeflag: tar.TypeSymlink, Name: IndexPath, Linkname: "/etc/passwd"}}), false},
		{"the index a directory", "unexpected entry", tarOf(dir, entry{h: tar.Header{Typeflag: tar.TypeDir, Name: IndexPath + "/", Mode: 0o755}}), false},
		{"over 64 MiB", "more than the limit", huge.Bytes(), false},
		{"no index", "no " + IndexPath, tarOf(dir), false},
		{"empty stream", "no " + IndexPath, nil, false},
		{"not a tar", "delta index layer", bytes.Repeat([]byte("not a tar "), 100), false},
		{"truncated", "delta index layer", built.Bytes()[:1024+4], false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ReadIndex(bytes.NewReader(c.tar))
			switch {
			case c.ok && err != nil:
				t.Fatalf("error %v", err)
			case c.ok && string(got) != c.want:
				t.Errorf("read %q, want %q", got, c.want)
			case !c.ok && err == nil:
				t.Errorf("read %q, want an error", got)
			case !c.ok && !strings.Contains(err.Error(), c.want):
				t.Errorf("error %q, want %q in it", err, c.want)
			}
		})
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
