package sign

import (
	"context"
	"crypto/ecdsa"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stagehand-dev/stagehand/sign/signtest"
)

// testRegistry serves go-containerregistry's registry on 127.0.0.1.
func testRegistry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// pushRandom pushes a small random image to ref and returns its digest.
func pushRandom(t testing.TB, ref string) (name.Reference, v1.Hash) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return r, d
}

// encryptKey writes priv as cosign writes cosign.key.
func encryptKey(t testing.TB, priv any, password []byte, pemType string) []byte {
	return signtest.EncryptKey(t, priv, password, pemType)
}

func newKey(t testing.TB) *ecdsa.PrivateKey { return signtest.NewKey(t) }

var ctx = context.Background()
