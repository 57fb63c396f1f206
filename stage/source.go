package stage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Transport says where an image comes from, in skopeo's words.
type Transport string

// The transports.
const (
	Registry      Transport = "docker"
	OCILayout     Transport = "oci"
	DockerArchive Transport = "docker-archive"
)

// Source is a parsed image reference.
type Source struct {
	Transport Transport
	Ref       name.Reference // Registry
	Path      string         // OCILayout directory, DockerArchive file
	Tag       string         // OCILayout tag, DockerArchive reference (optional)
	raw       string
}

func (s *Source) String() string { return s.raw }

// ErrBadReference marks a reference that does not parse.
var ErrBadReference = errors.New("malformed image reference")

// ParseSource parses REF: a registry reference (optionally docker://), or
// oci:DIR[:TAG], or docker-archive:FILE[:REF]. As in skopeo, DIR and FILE
// cannot hold a colon.
func ParseSource(ref string, insecure bool) (*Source, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w %q: %s (want REGISTRY/REPO[:TAG|@sha256:DIGEST], oci:DIR[:TAG] or docker-archive:FILE)", ErrBadReference, ref, why)
	}
	if ref == "" {
		return nil, bad("empty")
	}
	for _, t := range []Transport{OCILayout, DockerArchive} {
		if rest, ok := strings.CutPrefix(ref, string(t)+":"); ok {
			p, tag, _ := strings.Cut(rest, ":")
			if p == "" {
				return nil, bad("no path")
			}
			return &Source{Transport: t, Path: p, Tag: tag, raw: ref}, nil
		}
	}
	r := strings.TrimPrefix(ref, "docker://")
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	parsed, err := name.ParseReference(r, append(opts, name.StrictValidation)...)
	if err != nil {
		if _, lax := name.ParseReference(r, opts...); lax == nil {
			return nil, bad("no tag or digest; an upgrade names its version")
		}
		return nil, bad(err.Error())
	}
	return &Source{Transport: Registry, Ref: parsed, raw: ref}, nil
}

// image is a resolved installer image and what is needed to verify it.
type image struct {
	img    v1.Image
	digest v1.Hash  // manifest digest; for docker-archive the image ID (config digest)
	index  *v1.Hash // registry: the multi-platform index it was picked from, read by this digest
	layers []layerSource
	total  int64 // bytes to read, for progress; -1 when unknown
}

// layerSource opens one layer's stream and says how to verify it.
type layerSource struct {
	open       func() (io.ReadCloser, error)
	digest     *v1.Hash    // of the stream as opened; nil when the stream is the uncompressed layer
	size       int64       // of the stream, -1 when unknown
	diffID     v1.Hash     // of the uncompressed tar
	compressed bool        // the stream may need decompressing
	verified   bool        // the transport (or a delta.Reader, by chunk) checks the stream's bytes and size itself
	delta      *deltaLayer // staged from the machine's bytes and ranges of the blob; nil: read whole
}

// resolve finds the image for platform and checks the manifest and config
// against their digests.
func (s *Source) resolve(ctx context.Context, platform v1.Platform, kc authn.Keychain) (*image, error) {
	switch s.Transport {
	case Registry:
		opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(platform)}
		desc, err := remote.Get(s.Ref, opts...)
		if err != nil {
			return nil, describeRegistryError(s.Ref, err)
		}
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err != nil {
				return nil, describeRegistryError(s.Ref, err)
			}
			img, err := pick(idx, platform, s.raw)
			if err != nil {
				return nil, describeRegistryError(s.Ref, err)
			}
			out, err := verifiedByTransport(fromManifest(img, s.raw))
			if err != nil {
				return nil, err
			}
			// A signature of the index vouches for the image: the index's
			// bytes hash to its digest, and the image was fetched by the
			// digest the index lists.
			raw, err := idx.RawManifest()
			if err != nil {
				return nil, describeRegistryError(s.Ref, err)
			}
			if got := sha256Hash(raw); got != desc.Digest {
				return nil, fmt.Errorf("index of %s: digest is %s, expected %s", s.raw, got, desc.Digest)
			}
			out.index = &desc.Digest
			return out, nil
		}
		img, err := desc.Image()
		if err != nil {
			return nil, describeRegistryError(s.Ref, err)
		}
		return verifiedByTransport(checkPlatform(img, platform, s.raw))
	case OCILayout:
		idx, err := layout.ImageIndexFromPath(s.Path)
		if err != nil {
			return nil, fmt.Errorf("reading OCI layout %s: %w", s.Path, err)
		}
		d, err := layoutDescriptor(idx, s.Tag, s.Path)
		if err != nil {
			return nil, err
		}
		if d.MediaType.IsIndex() {
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading OCI layout %s: %w", s.Path, err)
			}
			img, err := pick(child, platform, s.raw)
			if err != nil {
				return nil, err
			}
			return fromManifest(img, s.raw)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading OCI layout %s: %w", s.Path, err)
		}
		return checkPlatform(img, platform, s.raw)
	case DockerArchive:
		var tag *name.Tag
		if s.Tag != "" {
			t, err := name.NewTag(s.Tag)
			if err != nil {
				return nil, fmt.Errorf("%w %q: %v", ErrBadReference, s.raw, err)
			}
			tag = &t
		}
		img, err := tarball.ImageFromPath(s.Path, tag)
		if err != nil {
			return nil, fmt.Errorf("reading docker archive %s: %w", s.Path, err)
		}
		if _, err := checkPlatformOnly(img, platform, s.raw); err != nil {
			return nil, err
		}
		return fromArchive(img, s.Path)
	}
	return nil, fmt.Errorf("unknown transport %q", s.Transport)
}

// verifiedByTransport marks the layers of a registry image: go-containerregistry's
// remote blobs check their digest and size as they are read.
func verifiedByTransport(img *image, err error) (*image, error) {
	if err != nil {
		return nil, err
	}
	for i := range img.layers {
		img.layers[i].verified = true
	}
	return img, nil
}

func layoutDescriptor(idx v1.ImageIndex, tag, dir string) (*v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	var tags []string
	for i, d := range im.Manifests {
		t := d.Annotations["org.opencontainers.image.ref.name"]
		if t != "" {
			tags = append(tags, t)
		}
		if (tag != "" && t == tag) || (tag == "" && len(im.Manifests) == 1) {
			return &im.Manifests[i], nil
		}
	}
	sort.Strings(tags)
	if tag == "" {
		return nil, fmt.Errorf("OCI layout %s holds %d images: name one as oci:%s:TAG (tags: %s)", dir, len(im.Manifests), dir, strings.Join(tags, ", "))
	}
	return nil, fmt.Errorf("OCI layout %s has no image tagged %q (tags: %s)", dir, tag, strings.Join(tags, ", "))
}

// pick chooses the image for platform from an index.
func pick(idx v1.ImageIndex, platform v1.Platform, ref string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		have = append(have, d.Platform.String())
		if d.MediaType.IsImage() && d.Platform.Satisfies(platform) {
			return idx.Image(d.Digest)
		}
	}
	sort.Strings(have)
	return nil, fmt.Errorf("%s has no image for platform %s; it has: %s (choose one with --platform)", ref, platform.String(), strings.Join(have, ", "))
}

// checkPlatformOnly reads an image's config and refuses another platform.
func checkPlatformOnly(img v1.Image, platform v1.Platform, ref string) (*v1.ConfigFile, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the config of %s: %w", ref, err)
	}
	got := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if cfg.Architecture != "" && !got.Satisfies(platform) {
		return nil, fmt.Errorf("%s has no image for platform %s; it has: %s (choose one with --platform)", ref, platform.String(), got.String())
	}
	return cfg, nil
}

func checkPlatform(img v1.Image, platform v1.Platform, ref string) (*image, error) {
	if _, err := checkPlatformOnly(img, platform, ref); err != nil {
		return nil, err
	}
	return fromManifest(img, ref)
}

// fromManifest reads a registry or layout image: the manifest and config are
// checked against their digests here, the layers while they stream.
func fromManifest(img v1.Image, ref string) (*image, error) {
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading the manifest of %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("reading the manifest of %s: %w", ref, err)
	}
	if got := sha256Hash(rawManifest); got != digest {
		return nil, fmt.Errorf("manifest of %s: digest is %s, expected %s", ref, got, digest)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("reading the manifest of %s: %w", ref, err)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the config of %s: %w", ref, err)
	}
	if got := sha256Hash(rawConfig); got != m.Config.Digest {
		return nil, fmt.Errorf("config of %s: digest is %s, the manifest says %s", ref, got, m.Config.Digest)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the config of %s: %w", ref, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%s: the manifest lists %d layers, the config %d", ref, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	out := &image{img: img, digest: digest}
	for i, d := range m.Layers {
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %s of %s: %w", d.Digest, ref, err)
		}
		dg := d.Digest
		out.layers = append(out.layers, layerSource{open: l.Compressed, digest: &dg, size: d.Size, diffID: cfg.RootFS.DiffIDs[i], compressed: true})
		out.total += d.Size
	}
	return out, nil
}

// fromArchive reads a docker archive: its layers are verified against the
// config's diff IDs, and the image is named by its config digest.
func fromArchive(img v1.Image, file string) (*image, error) {
	id, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w", file, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w", file, err)
	}
	out := &image{img: img, digest: id, total: -1}
	if st, err := os.Stat(file); err == nil {
		out.total = st.Size()
	}
	for _, diffID := range cfg.RootFS.DiffIDs {
		l, err := img.LayerByDiffID(diffID)
		if err != nil {
			return nil, fmt.Errorf("docker archive %s: layer %s: %w", file, diffID, err)
		}
		out.layers = append(out.layers, layerSource{open: l.Uncompressed, size: -1, diffID: diffID})
	}
	return out, nil
}

func sha256Hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// RegistryError is a registry failure, said in the user's terms.
type RegistryError struct {
	Ref    string
	Reason string
	Err    error
}

func (e *RegistryError) Error() string { return e.Ref + ": " + e.Reason }
func (e *RegistryError) Unwrap() error { return e.Err }

func describeRegistryError(ref name.Reference, err error) error {
	r := ref.String()
	var te *transport.Error
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &te):
		codes := map[transport.ErrorCode]bool{}
		for _, d := range te.Errors {
			codes[d.Code] = true
		}
		switch {
		case te.StatusCode == http.StatusUnauthorized || codes[transport.UnauthorizedErrorCode]:
			return &RegistryError{r, fmt.Sprintf("the registry %s refused the credentials (log in with `docker login %s`, or check ~/.docker/config.json)", ref.Context().RegistryStr(), ref.Context().RegistryStr()), err}
		case te.StatusCode == http.StatusForbidden || codes[transport.DeniedErrorCode]:
			return &RegistryError{r, fmt.Sprintf("the registry %s denied access to %s", ref.Context().RegistryStr(), ref.Context().RepositoryStr()), err}
		case te.StatusCode == http.StatusNotFound || codes[transport.ManifestUnknownErrorCode] || codes[transport.NameUnknownErrorCode]:
			return &RegistryError{r, fmt.Sprintf("not found in the registry %s (check the repository, tag or digest)", ref.Context().RegistryStr()), err}
		}
		return &RegistryError{r, "the registry answered: " + te.Error(), err}
	case errors.As(err, &oe), errors.As(err, &ne):
		return &RegistryError{r, fmt.Sprintf("registry %s unreachable: %v", ref.Context().RegistryStr(), err), err}
	}
	return &RegistryError{r, err.Error(), err}
}
