package applytest

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry serves go-containerregistry's registry on 127.0.0.1 until the
// test ends and returns its host:port (plain HTTP: stage with Insecure).
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Push pushes version's installer image (Image) to host as
// host/stagehand/os:version and returns that reference.
func (m *Machine) Push(host, version string) string {
	m.T.Helper()
	img := m.Image(version)
	defer img.Close()
	ref := host + "/stagehand/os:" + version
	r, err := name.ParseReference(ref)
	if err != nil {
		m.T.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		m.T.Fatal(err)
	}
	return ref
}
