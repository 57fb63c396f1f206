package installer

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const refName = "org.opencontainers.image.ref.name"

// WriteLayout writes img into the OCI layout at dir (created when missing),
// tagged tag; an image already tagged so is replaced.
func WriteLayout(dir, tag string, img v1.Image) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating OCI layout %s: %w", dir, err)
		}
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{refName: tag}))
	}
	if err := p.ReplaceImage(img, match.Annotation(refName, tag), opts...); err != nil {
		return fmt.Errorf("writing to OCI layout %s: %w", dir, err)
	}
	return nil
}

// Push writes img to the registry reference ref, with credentials from kc.
func Push(ctx context.Context, ref name.Reference, img v1.Image, kc authn.Keychain) error {
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	return nil
}
