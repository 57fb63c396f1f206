package stage

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
)

// Fetched is an installer image's artifacts, each in a file of its own.
type Fetched struct {
	Digest   string
	SignedBy string
	Files    map[string]string // artifact name (payload.Kernel, ...) → path
}

// fileSink is an artifact sink over a plain file.
type fileSink struct{ *os.File }

func (fileSink) StartWriteback(off, n int64) {}

// Fetch pulls o.Image like Stage does — every blob checked, signatures as
// o asks, hostile entries refused — and writes its artifacts as files into
// dir (which should be private to the caller). It is how a disk is made
// from an installer image (`stager disk init --install`).
func Fetch(ctx context.Context, o Options, dir string) (*Fetched, error) {
	o.defaults()
	src, reqs, err := o.source()
	if err != nil {
		return nil, err
	}
	img, signedBy, err := o.pull(ctx, src, reqs)
	if err != nil {
		return nil, err
	}
	all, err := os.CreateTemp(dir, "payload-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(all.Name())
	defer all.Close()
	const unbounded = 1 << 62
	x := &extractor{
		ctx: ctx, dst: fileSink{all}, half: unbounded, end: unbounded,
		maxArtifact: o.MaxArtifact, maxUnpacked: o.MaxUnpacked,
		want: installer.Artifacts(o.Platform.Architecture), found: map[string]meta.Artifact{}, install: map[string]bool{},
		buf: make([]byte, 1<<20),
	}
	var done int64
	x.progress = func(n int64) { done += n; o.Progress(done, img.total) }
	arts, err := x.write(img, o.Platform.Architecture)
	if err != nil {
		return nil, err
	}
	f := &Fetched{Digest: img.digest.String(), SignedBy: signedBy, Files: map[string]string{}}
	for _, a := range arts {
		p := filepath.Join(dir, a.Name)
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(out, io.NewSectionReader(all, a.Offset, a.Size))
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("writing %s: %w", a.Name, err)
		}
		f.Files[a.Name] = p
	}
	return f, nil
}
