package sign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// The ways a verification fails, for errors.Is.
var (
	ErrNoSignature = errors.New("no signature")
	ErrWrongKey    = errors.New("not signed by the key")
	ErrOtherDigest = errors.New("signed payload is for another digest")
)

// MaxSignatures bounds the layers of a signature image that are read.
const MaxSignatures = 128

// Option configures the registry access of Verify and Sign.
type Option func(*options)

type options struct {
	keychain authn.Keychain
	remote   []remote.Option
	index    *v1.Hash
}

// WithKeychain sets the credentials (default: the Docker config).
func WithKeychain(kc authn.Keychain) Option { return func(o *options) { o.keychain = kc } }

// WithRemote adds go-containerregistry options (a transport, a user agent).
func WithRemote(opts ...remote.Option) Option {
	return func(o *options) { o.remote = append(o.remote, opts...) }
}

// WithIndex makes Verify also accept a signature of the multi-platform
// index h that the image was picked from (what `cosign sign` signs for a
// tag naming an index). The caller vouches that it read the index by this
// digest and took the image's digest from it.
func WithIndex(h v1.Hash) Option { return func(o *options) { o.index = &h } }

func makeOptions(ctx context.Context, opts []Option) *options {
	o := &options{keychain: authn.DefaultKeychain}
	for _, f := range opts {
		f(o)
	}
	o.remote = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(o.keychain)}, o.remote...)
	return o
}

// SignatureTag is where cosign keeps the signatures of digest in repo:
// REPO:sha256-<hex>.sig.
func SignatureTag(repo name.Repository, digest v1.Hash) name.Tag {
	return repo.Tag(digest.Algorithm + "-" + digest.Hex + ".sig")
}

// Verified says what verified an image.
type Verified struct {
	Digest      v1.Hash  // the digest the signature is for: the image's, or its index's
	Tag         name.Tag // the signature image it was found in
	Fingerprint string   // of the key that verified it
	Payload     *Payload
}

// Verify checks that the image digest in ref's repository has a cosign
// signature by pub: a layer of REPO:sha256-<hex>.sig whose signature
// annotation verifies over its payload with pub, and whose payload is
// cosign's simple signing for exactly digest. The errors say which failed:
// ErrNoSignature, ErrWrongKey or ErrOtherDigest (a registry error otherwise).
func Verify(ctx context.Context, ref name.Reference, digest v1.Hash, pub crypto.PublicKey, opts ...Option) (*Verified, error) {
	return VerifyAny(ctx, ref, digest, []crypto.PublicKey{pub}, opts...)
}

// VerifyAny is Verify for a signature by any one of keys.
func VerifyAny(ctx context.Context, ref name.Reference, digest v1.Hash, keys []crypto.PublicKey, opts ...Option) (*Verified, error) {
	o := makeOptions(ctx, opts)
	var eks []*ecdsa.PublicKey
	for _, k := range keys {
		ek, err := checkPublic(k)
		if err != nil {
			return nil, err
		}
		eks = append(eks, ek)
	}
	if len(eks) == 0 {
		return nil, fmt.Errorf("%w: no key to verify with", ErrKey)
	}
	digests := []v1.Hash{digest}
	if o.index != nil && *o.index != digest {
		digests = append(digests, *o.index)
	}
	var found []*sigImage
	for _, d := range digests {
		s, err := fetch(ref.Context(), d, o)
		if errors.Is(err, ErrNoSignature) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if v := s.verify(eks); v != nil {
			return v, nil
		}
		found = append(found, s)
	}
	what := digest.String()
	if len(digests) > 1 {
		what += " or its index " + digests[1].String()
	}
	if len(found) == 0 {
		tags := SignatureTag(ref.Context(), digest).TagStr()
		if len(digests) > 1 {
			tags += " nor " + SignatureTag(ref.Context(), digests[1]).TagStr()
		}
		return nil, fmt.Errorf("%w: %s has no cosign signature for %s (no tag %s)", ErrNoSignature, ref.Context(), what, tags)
	}
	n := 0
	for _, s := range found {
		n += len(s.layers)
		for _, l := range s.layers {
			if l.signedFor != nil {
				return nil, fmt.Errorf("%w: %s holds a signature by key %s for %s, not for %s", ErrOtherDigest, s.tag, l.signedBy, l.signedFor, what)
			}
		}
	}
	return nil, fmt.Errorf("%w: none of the %d signatures of %s in %s verifies with key %s", ErrWrongKey, n, what, ref.Context(), fingerprints(eks))
}

func fingerprints(keys []*ecdsa.PublicKey) string {
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += " or "
		}
		s += Fingerprint(k)
	}
	return s
}

// sigImage is a signature image as read.
type sigImage struct {
	tag    name.Tag
	digest v1.Hash // the image digest it is for
	img    v1.Image
	layers []sigLayer
}

type sigLayer struct {
	payload   []byte
	sig       []byte // decoded; nil when the annotation is missing or bad
	signedFor *v1.Hash
	signedBy  string
}

// fetch reads the signature image of digest in repo; a missing tag is
// ErrNoSignature.
func fetch(repo name.Repository, digest v1.Hash, o *options) (*sigImage, error) {
	tag := SignatureTag(repo, digest)
	s := &sigImage{tag: tag, digest: digest}
	img, err := remote.Image(tag, o.remote...)
	if err != nil {
		if notFound(err) {
			return nil, ErrNoSignature
		}
		return nil, fmt.Errorf("reading signatures %s: %w", tag, err)
	}
	s.img = img
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("reading signatures %s: %w", tag, err)
	}
	for i, d := range m.Layers {
		if i == MaxSignatures {
			break
		}
		b64, ok := d.Annotations[SignatureAnnotation]
		if !ok {
			continue // not a signature (cosign attaches nothing else here, but others might)
		}
		if d.Size > MaxPayload {
			s.layers = append(s.layers, sigLayer{}) // counted, never verifies
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			sig = nil // never verifies
		}
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading signatures %s: %w", tag, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, fmt.Errorf("reading signatures %s: layer %s: %w", tag, d.Digest, err)
		}
		// Read to the end: the registry's blob is checked against its
		// digest at EOF.
		b, err := io.ReadAll(io.LimitReader(rc, MaxPayload+1))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("reading signatures %s: layer %s: %w", tag, d.Digest, err)
		}
		if len(b) > MaxPayload {
			b, sig = nil, nil
		}
		s.layers = append(s.layers, sigLayer{payload: b, sig: sig})
	}
	return s, nil
}

func notFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}

// verify returns what verifies with one of keys for s.digest, or nil; it
// notes on each layer a good signature for another digest.
func (s *sigImage) verify(keys []*ecdsa.PublicKey) *Verified {
	for i := range s.layers {
		l := &s.layers[i]
		h := sha256.Sum256(l.payload)
		for _, k := range keys {
			if !ecdsa.VerifyASN1(k, h[:], l.sig) {
				continue
			}
			p, err := ParsePayload(l.payload)
			if err != nil {
				continue // signed, but not an image signature (cosign attestations, blobs)
			}
			if p.Digest != s.digest {
				l.signedFor, l.signedBy = &p.Digest, Fingerprint(k)
				continue
			}
			return &Verified{Digest: s.digest, Tag: s.tag, Fingerprint: Fingerprint(k), Payload: p}
		}
	}
	return nil
}
