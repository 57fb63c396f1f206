package installer

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stagehand-dev/stagehand/delta"
)

// BuildOptions are the inputs of an installer image.
type BuildOptions struct {
	Kernel    string // path of the kernel image
	Initramfs string // path of the initramfs
	UKI       string // path of a unified kernel image, instead of Kernel and Initramfs (and Cmdline: it carries its own)
	Cmdline   string // kernel command line, optional
	Version   string // version, optional
	Arch      string // Go architecture, e.g. amd64
	TempDir   string // where the layers are assembled (default: os.TempDir)
	NoIndex   bool   // leave out the delta index layer: the artifact layer only
}

// Built is an installer image backed by layer files; Close removes them.
type Built struct {
	v1.Image
	layers []string
}

// Close removes the layer files.
func (b *Built) Close() error {
	var errs []error
	for _, p := range b.layers {
		errs = append(errs, os.Remove(p))
	}
	b.layers = nil
	return errors.Join(errs...)
}

// Build makes an installer image: an uncompressed layer of the artifacts
// (the kernel and initramfs are compressed already), then, unless
// o.NoIndex, an uncompressed layer holding the delta index of the first
// (see IndexPath and IndexAnnotation). Every timestamp and owner is fixed,
// so that the same inputs give the same digest.
func Build(o BuildOptions) (*Built, error) {
	if o.Arch == "" {
		return nil, fmt.Errorf("installer image: no architecture given")
	}
	if o.UKI != "" && (o.Kernel != "" || o.Initramfs != "" || o.Cmdline != "") {
		return nil, fmt.Errorf("installer image: a UKI carries its kernel, initramfs and command line; give either the UKI or those")
	}
	f, err := os.CreateTemp(o.TempDir, "stagehand-layer-*.tar")
	if err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	b := &Built{layers: []string{f.Name()}}
	if err := writeLayer(f, o); err != nil {
		f.Close()
		b.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		b.Close()
		return nil, fmt.Errorf("installer image: %w", err)
	}
	adds, err := b.layersOf(o)
	if err != nil {
		b.Close()
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, adds...)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("installer image: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("installer image: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", o.Arch
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	if o.Version != "" {
		cfg.Config.Labels = map[string]string{"org.opencontainers.image.version": o.Version}
	}
	if b.Image, err = mutate.ConfigFile(img, cfg); err != nil {
		b.Close()
		return nil, fmt.Errorf("installer image: %w", err)
	}
	return b, nil
}

// layersOf returns the image's layers: the artifact layer written to
// b.layers[0] and, unless o.NoIndex, its index layer, written to a second
// file added to b.layers.
func (b *Built) layersOf(o BuildOptions) ([]mutate.Addendum, error) {
	if o.NoIndex {
		l, err := newFileLayer(b.layers[0])
		if err != nil {
			return nil, err
		}
		return []mutate.Addendum{{Layer: l, MediaType: types.OCIUncompressedLayer}}, nil
	}
	// One pass over the layer file gives its index and, from the index's
	// size and SHA-256, the layer's size and digest: the index is of the
	// very bytes pushed.
	f, err := os.Open(b.layers[0])
	if err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	x, err := delta.Build(bufio.NewReaderSize(f, 1<<20), delta.DefaultParams)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("installer image: indexing the layer: %w", err)
	}
	l := &fileLayer{path: b.layers[0], size: x.Size, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(x.SHA256[:])}}
	data, err := x.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("installer image: indexing the layer: %w", err)
	}
	g, err := os.CreateTemp(o.TempDir, "stagehand-index-*.tar")
	if err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	b.layers = append(b.layers, g.Name())
	err = writeIndexLayer(g, data)
	if cerr := g.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("installer image: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	il, err := newFileLayer(g.Name())
	if err != nil {
		return nil, err
	}
	return []mutate.Addendum{
		{Layer: l, MediaType: types.OCIUncompressedLayer},
		{Layer: il, MediaType: types.OCIUncompressedLayer, Annotations: map[string]string{IndexAnnotation: l.digest.String()}},
	}, nil
}

func writeLayer(w io.Writer, o BuildOptions) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	epoch := time.Unix(0, 0).UTC()
	dir := Dir(o.Arch)
	for _, d := range []string{"usr/", "usr/install/", dir + "/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("installer image: %w", err)
		}
	}
	add := func(name string, size int64, r io.Reader) error {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: path.Join(dir, name), Mode: 0o644, Size: size, ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("installer image: %s: %w", name, err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("installer image: %s: %w", name, err)
		}
		return nil
	}
	files := []struct{ name, file string }{{"vmlinuz", o.Kernel}, {"initramfs.xz", o.Initramfs}}
	if o.UKI != "" {
		files = []struct{ name, file string }{{"vmlinuz.efi", o.UKI}}
	}
	for _, a := range files {
		f, err := os.Open(a.file)
		if err != nil {
			return fmt.Errorf("installer image: %s: %w", a.name, err)
		}
		st, err := f.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", a.file)
		}
		if err == nil {
			err = add(a.name, st.Size(), f)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	for _, a := range []struct{ name, text string }{{"cmdline", o.Cmdline}, {"version", o.Version}} {
		if a.text != "" {
			if err := add(a.name, int64(len(a.text)), strings.NewReader(a.text)); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("installer image: %w", err)
	}
	return bw.Flush()
}

// fileLayer is an uncompressed layer read from a file.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func newFileLayer(p string) (*fileLayer, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	return &fileLayer{path: p, size: n, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}, nil
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) {
	return types.OCIUncompressedLayer, nil
}
