package sign

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Formats of cosign's signature images.
const (
	// PayloadType is the critical.type of cosign's payloads.
	PayloadType = "cosign container image signature"
	// PayloadMediaType is the media type of a signature layer.
	PayloadMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation holds a layer's signature, base64 (standard
	// encoding) of the ASN.1 DER ECDSA signature over SHA-256(payload).
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// MaxPayload bounds a payload read from a registry; cosign's are a few
	// hundred bytes.
	MaxPayload = 64 << 10
)

// Payload is cosign's simple-signing payload (after the containers/image
// signature format):
//
//	{"critical":{"identity":{"docker-reference":"REPO"},
//	             "image":{"docker-manifest-digest":"sha256:HEX"},
//	             "type":"cosign container image signature"},
//	 "optional":null}
//
// Marshal gives byte for byte what cosign signs for the same repository,
// digest and annotations.
type Payload struct {
	// DockerReference is the repository the signer named (cosign: the
	// image's repository). It is informative: like cosign, Verify does not
	// hold it against the reference being verified, so a signed image
	// copied to a mirror stays verifiable.
	DockerReference string
	Digest          v1.Hash        // the manifest digest the signature is for
	Optional        map[string]any // cosign's annotations (-a key=value); nil when none
}

// simpleSigning is the JSON form; its field order is cosign's.
type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// NewPayload is the payload cosign signs for digest in repo.
func NewPayload(repo name.Repository, digest v1.Hash) *Payload {
	return &Payload{DockerReference: repo.Name(), Digest: digest}
}

// Marshal encodes p as cosign does.
func (p *Payload) Marshal() ([]byte, error) {
	if err := checkDigest(p.Digest); err != nil {
		return nil, fmt.Errorf("signature payload: %w", err)
	}
	var s simpleSigning
	s.Critical.Identity.DockerReference = p.DockerReference
	s.Critical.Image.DockerManifestDigest = p.Digest.String()
	s.Critical.Type = PayloadType
	s.Optional = p.Optional
	return json.Marshal(s)
}

// ErrBadPayload marks a payload that is not cosign's simple signing.
var ErrBadPayload = errors.New("not a cosign signature payload")

// ParsePayload decodes a simple-signing payload. It wants cosign's type and
// a sha256 digest; unknown fields are ignored, as cosign does.
func ParsePayload(b []byte) (*Payload, error) {
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBadPayload, len(b), MaxPayload)
	}
	var s simpleSigning
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	if d.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrBadPayload)
	}
	if s.Critical.Type != PayloadType {
		return nil, fmt.Errorf("%w: type is %q, want %q", ErrBadPayload, s.Critical.Type, PayloadType)
	}
	h, err := v1.NewHash(s.Critical.Image.DockerManifestDigest)
	if err != nil {
		return nil, fmt.Errorf("%w: docker-manifest-digest: %v", ErrBadPayload, err)
	}
	if err := checkDigest(h); err != nil {
		return nil, fmt.Errorf("%w: docker-manifest-digest: %v", ErrBadPayload, err)
	}
	return &Payload{DockerReference: s.Critical.Identity.DockerReference, Digest: h, Optional: s.Optional}, nil
}

// checkDigest accepts a sha256 digest in lower-case hex, the only form
// registries and cosign produce.
func checkDigest(h v1.Hash) error {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return fmt.Errorf("digest %q is not sha256:<64 hex digits>", h.String())
	}
	for _, c := range h.Hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("digest %q is not sha256:<64 lower-case hex digits>", h.String())
		}
	}
	return nil
}
