package installer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// An installer image built by Build carries, after its artifact layer, a
// second layer holding the delta index (package delta) of the artifact
// layer's blob: with it a machine stages the image from the bytes it
// already holds and reads only the missing chunks of the blob by HTTP
// Range. The index layer's manifest descriptor names the layer it indexes,
// so a signature of the manifest covers the index too.
const (
	// IndexPath is the index's path in its layer, without a leading slash.
	IndexPath = "stagehand/delta-index"
	// IndexAnnotation, on the index layer's descriptor in the manifest,
	// is the digest ("sha256:…") of the layer the index describes.
	IndexAnnotation = "dev.stagehand.delta-index.of"
)

// maxIndexSize bounds the index ReadIndex reads: 64 MiB is some 1.8
// million chunks, a blob of over 100 GiB at the default chunk sizes.
const maxIndexSize = 64 << 20

// writeIndexLayer writes the index layer's tar, holding data at IndexPath,
// as deterministically as writeLayer.
func writeIndexLayer(w io.Writer, data []byte) error {
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0).UTC()
	hs := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: path.Dir(IndexPath) + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX},
		{Typeflag: tar.TypeReg, Name: IndexPath, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX},
	}
	for _, h := range hs {
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("installer image: index layer: %w", err)
		}
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("installer image: index layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("installer image: index layer: %w", err)
	}
	return nil
}

// IndexOf finds the delta index layer in m: it returns that layer's
// descriptor and the digest of the layer it indexes. ok is false unless
// exactly one layer carries IndexAnnotation, its value is a digest, and
// another layer of m has that digest.
func IndexOf(m *v1.Manifest) (index v1.Descriptor, of v1.Hash, ok bool) {
	if m == nil {
		return v1.Descriptor{}, v1.Hash{}, false
	}
	n := 0
	for _, d := range m.Layers {
		if _, has := d.Annotations[IndexAnnotation]; has {
			index, n = d, n+1
		}
	}
	if n != 1 {
		return v1.Descriptor{}, v1.Hash{}, false
	}
	of, err := v1.NewHash(index.Annotations[IndexAnnotation])
	if err != nil || of == index.Digest {
		return v1.Descriptor{}, v1.Hash{}, false
	}
	for _, d := range m.Layers {
		if d.Digest == of {
			return index, of, true
		}
	}
	return v1.Descriptor{}, v1.Hash{}, false
}

// ReadIndex reads an index layer's (uncompressed) tar stream and returns
// the bytes of IndexPath, for delta.Parse. It refuses a tar holding
// anything but IndexPath and its directory, or an index over 64 MiB.
func ReadIndex(r io.Reader) ([]byte, error) {
	tr := tar.NewReader(r)
	dir := path.Dir(IndexPath)
	var data []byte
	found, sawDir := false, false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("delta index layer: %w", err)
		}
		switch {
		case h.Typeflag == tar.TypeDir && strings.TrimSuffix(h.Name, "/") == dir:
			if sawDir {
				return nil, fmt.Errorf("delta index layer: %q appears twice", h.Name)
			}
			sawDir = true
		case h.Typeflag == tar.TypeReg && h.Name == IndexPath:
			if found {
				return nil, fmt.Errorf("delta index layer: %s appears twice", IndexPath)
			}
			if h.Size > maxIndexSize {
				return nil, fmt.Errorf("delta index layer: %s is %d bytes, more than the limit of %d", IndexPath, h.Size, maxIndexSize)
			}
			if data, err = io.ReadAll(io.LimitReader(tr, maxIndexSize+1)); err != nil {
				return nil, fmt.Errorf("delta index layer: %s: %w", IndexPath, err)
			}
			if int64(len(data)) != h.Size { // the tar reader's own check; never more than the limit
				return nil, fmt.Errorf("delta index layer: %s: read %d bytes, its header says %d", IndexPath, len(data), h.Size)
			}
			found = true
		default:
			return nil, fmt.Errorf("delta index layer: unexpected entry %q (type %q): it should hold only %s", h.Name, h.Typeflag, IndexPath)
		}
	}
	if !found {
		return nil, errors.New("delta index layer: no " + IndexPath)
	}
	return data, nil
}
