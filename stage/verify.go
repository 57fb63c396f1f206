package stage

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/stagehand-dev/stagehand/sign"
)

// ErrUnverifiable marks a signature requirement on an image from a local
// source (oci:, docker-archive:), which carries no signature.
var ErrUnverifiable = errors.New("signatures need a registry reference")

// requirement is one demand for a signature: by --verify-key or a policy
// rule.
type requirement struct {
	what string
	keys []crypto.PublicKey
}

// requirements lists what src must be signed by.
func (o *Options) requirements(src *Source) []requirement {
	var reqs []requirement
	if len(o.VerifyKeys) > 0 {
		reqs = append(reqs, requirement{"--verify-key", o.VerifyKeys})
	}
	if r := o.Policy.Rule(src.Ref); r != nil {
		reqs = append(reqs, requirement{fmt.Sprintf("policy %s %s", o.Policy.Path(), r), r.PublicKeys()})
	}
	return reqs
}

// source parses o.Image and lists what it must be signed by, refusing a
// source that cannot carry those signatures: before any disk or network
// work.
func (o *Options) source() (*Source, []requirement, error) {
	src, err := ParseSource(o.Image, o.Insecure)
	if err != nil {
		return nil, nil, err
	}
	reqs := o.requirements(src)
	if err := checkSignable(src, reqs); err != nil {
		return nil, nil, err
	}
	return src, reqs, nil
}

// pull resolves src for o's platform and checks its signatures against
// reqs; it returns the image and the fingerprints of the keys that signed it.
func (o *Options) pull(ctx context.Context, src *Source, reqs []requirement) (*image, string, error) {
	img, err := src.resolve(ctx, *o.Platform, o.Keychain)
	if err != nil {
		return nil, "", err
	}
	signedBy, err := verify(ctx, src, img, reqs, o.Keychain)
	if err != nil {
		return nil, "", err
	}
	return img, signedBy, nil
}

// checkSignable refuses a requirement that src cannot meet, before the disk
// is opened.
func checkSignable(src *Source, reqs []requirement) error {
	if len(reqs) == 0 || src.Transport == Registry {
		return nil
	}
	kind := map[Transport]string{OCILayout: "an OCI layout", DockerArchive: "a docker archive"}[src.Transport]
	return fmt.Errorf("%s: %w: %s carries none, and %s requires one (stage from REGISTRY/REPO:TAG or @sha256:DIGEST)", src, ErrUnverifiable, kind, reqs[0].what)
}

// verify checks every requirement against img's signatures and returns the
// fingerprints of the keys that met them, comma-separated.
func verify(ctx context.Context, src *Source, img *image, reqs []requirement, kc authn.Keychain) (string, error) {
	var fps []string
	for _, r := range reqs {
		opts := []sign.Option{sign.WithKeychain(kc)}
		if img.index != nil {
			opts = append(opts, sign.WithIndex(*img.index))
		}
		v, err := sign.VerifyAny(ctx, src.Ref, img.digest, r.keys, opts...)
		if err != nil {
			switch {
			case errors.Is(err, sign.ErrNoSignature), errors.Is(err, sign.ErrWrongKey), errors.Is(err, sign.ErrOtherDigest), errors.Is(err, sign.ErrKey):
			default:
				err = describeRegistryError(src.Ref, err)
			}
			return "", fmt.Errorf("refusing %s (%s requires a signature): %w", src, r.what, err)
		}
		if !contains(fps, v.Fingerprint) {
			fps = append(fps, v.Fingerprint)
		}
	}
	return strings.Join(fps, ","), nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// DescribeRegistryError says a registry failure about ref in the user's
// terms (credentials refused, not found, unreachable), as staging does.
func DescribeRegistryError(ref name.Reference, err error) error {
	return describeRegistryError(ref, err)
}
