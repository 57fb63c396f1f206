package agentimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// file is one entry of a layer: a directory, bytes, or a file on the build
// machine (only its contents count, not its mode, owner or mtime).
type file struct {
	name string // absolute path in the image
	src  string
	data []byte
	dir  bool
	mode int64
}

// newLayer returns a gzipped OCI layer of files and their parent
// directories, reproducibly: entries sorted by name, owned by 0:0, with
// mtime t, no user or group names, no build machine metadata.
func newLayer(files []file, t time.Time) (v1.Layer, error) {
	all := map[string]file{}
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean(f.name), "/")
		f.name = name
		all[name] = f
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = file{name: d, dir: true, mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := all[n]
		hdr := &tar.Header{Name: n, Mode: f.mode, ModTime: t, Format: tar.FormatPAX}
		if f.dir {
			hdr.Typeflag, hdr.Name = tar.TypeDir, n+"/"
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		data := f.data
		if f.src != "" {
			var err error
			if data, err = os.ReadFile(f.src); err != nil {
				return nil, fmt.Errorf("reading %s for %s: %w", f.src, "/"+n, err)
			}
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}
