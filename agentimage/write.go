package agentimage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// AnnotationRefName tags the index in an OCI layout's index.json, so that
// oci:DIR:TAG names it (skopeo, stager).
const AnnotationRefName = "org.opencontainers.image.ref.name"

// WriteLayout writes idx to a new OCI layout at dir, listed in its
// index.json under tag, and returns the index's digest. dir must not exist
// or be empty: blobs left from another build would stay in it.
func WriteLayout(dir string, idx v1.ImageIndex, tag string) (v1.Hash, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return v1.Hash{}, fmt.Errorf("layout %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return v1.Hash{}, fmt.Errorf("layout %s: not empty: remove it first", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("layout %s: %w", dir, err)
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{AnnotationRefName: tag}))
	}
	if err := p.AppendIndex(idx, opts...); err != nil {
		return v1.Hash{}, fmt.Errorf("layout %s: %w", dir, err)
	}
	return idx.Digest()
}

// Push writes idx to the registry at ref with the credentials of
// authn.DefaultKeychain (docker login's config, credential helpers) unless
// opts say otherwise, and returns the pushed digest as REPO@sha256:….
func Push(ctx context.Context, idx v1.ImageIndex, ref string, opts ...remote.Option) (name.Digest, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return name.Digest{}, fmt.Errorf("parsing reference %q: %w", ref, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.WriteIndex(r, idx, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("pushing %s: %w", r, err)
	}
	h, err := idx.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return r.Context().Digest(h.String()), nil
}
