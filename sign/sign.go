package sign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Signed says what Sign did.
type Signed struct {
	Digest      v1.Hash  // the image digest signed
	Tag         name.Tag // the signature image
	Fingerprint string   // of the signing key's public half
	Already     bool     // the image was signed by this key already: nothing written
}

// Digest asks the registry for the manifest digest ref names (for a tag
// naming a multi-platform index, the index's: what cosign signs).
func Digest(ctx context.Context, ref name.Reference, opts ...Option) (v1.Hash, error) {
	o := makeOptions(ctx, opts)
	d, err := remote.Head(ref, o.remote...)
	if err != nil {
		// Some registries answer HEAD badly; GET is authoritative.
		desc, gerr := remote.Get(ref, o.remote...)
		if gerr != nil {
			return v1.Hash{}, fmt.Errorf("resolving %s: %w", ref, gerr)
		}
		return desc.Digest, nil
	}
	if dg, ok := ref.(name.Digest); ok && d.Digest.String() != dg.DigestStr() {
		return v1.Hash{}, fmt.Errorf("resolving %s: the registry answered %s", ref, d.Digest)
	}
	return d.Digest, nil
}

// Sign signs digest in ref's repository as `cosign sign --key` does: it
// appends a layer holding the simple-signing payload, with the base64
// ECDSA signature as annotation, to the signature image
// REPO:sha256-<hex>.sig (created when missing). When that image already
// holds a signature of the same payload by the same key, nothing is written.
// The payload names ref's repository, as cosign's does.
func Sign(ctx context.Context, ref name.Reference, digest v1.Hash, priv crypto.Signer, opts ...Option) (*Signed, error) {
	o := makeOptions(ctx, opts)
	pub, err := checkPublic(priv.Public())
	if err != nil {
		return nil, err
	}
	payload, err := NewPayload(ref.Context(), digest).Marshal()
	if err != nil {
		return nil, err
	}
	out := &Signed{Digest: digest, Tag: SignatureTag(ref.Context(), digest), Fingerprint: Fingerprint(pub)}

	var base v1.Image
	existing, err := fetch(ref.Context(), digest, o)
	switch {
	case errors.Is(err, ErrNoSignature):
		// cosign's empty signature image: an OCI manifest with an OCI config.
		base = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	case err != nil:
		return nil, err
	default:
		for _, l := range existing.layers {
			h := sha256.Sum256(l.payload)
			if string(l.payload) == string(payload) && ecdsa.VerifyASN1(pub, h[:], l.sig) {
				out.Already = true
				return out, nil
			}
		}
		base = existing.img
	}

	h := sha256.Sum256(payload)
	sig, err := priv.Sign(rand.Reader, h[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", digest, err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:       static.NewLayer(payload, PayloadMediaType),
		Annotations: map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", digest, err)
	}
	if err := remote.Write(out.Tag, img, o.remote...); err != nil {
		return nil, fmt.Errorf("writing signature %s: %w", out.Tag, err)
	}
	return out, nil
}
