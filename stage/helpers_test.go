package stage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/installer"
)

const mib = disktest.MiB

// testLayout is a stagehand disk with a small ESP and a 32 MiB STAGE.
func testDisk(t testing.TB, stageSize int64) string {
	t.Helper()
	return disktest.Image(t, filepath.Join(t.TempDir(), "disk.img"), []disktest.Part{
		{Label: "EFI", Size: 2 * mib}, {Label: "META", Size: mib}, {Label: "STAGE", Size: stageSize},
	})
}

// artifactsIn are the kernel and initramfs bytes of a test installer image.
type artifactsIn struct {
	kernel, initramfs []byte
	version           string
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newArtifacts(seed uint64, kernel, initramfs int, version string) artifactsIn {
	return artifactsIn{randomBytes(seed, kernel), randomBytes(seed+1000, initramfs), version}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// buildImage builds an installer image with installer.Build.
func buildImage(t testing.TB, a artifactsIn, arch string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.xz")
	os.WriteFile(k, a.kernel, 0o644)
	os.WriteFile(i, a.initramfs, 0o644)
	img, err := installer.Build(installer.BuildOptions{Kernel: k, Initramfs: i, Version: a.version, Cmdline: "console=ttyS0", Arch: arch, TempDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// tarEntry is one entry of a crafted layer.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func regEntry(name string, data []byte) tarEntry {
	return tarEntry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}, data}
}

func craftedLayer(t testing.TB, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf makes an amd64 image of crafted layers.
func imageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// goodLayer holds a valid kernel and initramfs.
func goodLayer(t testing.TB, a artifactsIn) v1.Layer {
	return craftedLayer(t, regEntry("usr/install/amd64/vmlinuz", a.kernel), regEntry("usr/install/amd64/initramfs.xz", a.initramfs))
}

// testRegistry serves the go-containerregistry registry on 127.0.0.1; with
// a user, it wants basic auth.
func testRegistry(t testing.TB, user, pass string) string {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if user != "" {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"auth required"}]}`, http.StatusUnauthorized)
				return
			}
			inner.ServeHTTP(w, r)
		})
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

func push(t testing.TB, ref string, img v1.Image, kc authn.Keychain) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	if err := remote.Write(r, img, remote.WithAuthFromKeychain(kc)); err != nil {
		t.Fatal(err)
	}
}

func pushIndex(t testing.TB, ref string, imgs map[string]v1.Image) {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	for arch, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	r, _ := name.ParseReference(ref)
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
}

// writeLayout writes img to an OCI layout, tagged.
func writeLayout(t testing.TB, dir string, img v1.Image, tag string) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
}

func hashFile(t testing.TB, path string) [32]byte { t.Helper(); return disktest.Sum(t, path) }

type v1Image = v1.Image

func platform(s string) *v1.Platform {
	p, err := v1.ParsePlatform(s)
	if err != nil {
		panic(err)
	}
	return p
}

func tarballWrite(path string, img v1.Image) error {
	tag, _ := name.NewTag("stagehand/os:v3")
	return tarball.WriteToFile(path, tag, img)
}
