package agentimage

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The OCI annotations (and config labels) every image and the index carry.
const (
	AnnotationVersion  = "org.opencontainers.image.version"
	AnnotationRevision = "org.opencontainers.image.revision"
	AnnotationSource   = "org.opencontainers.image.source"
	AnnotationCreated  = "org.opencontainers.image.created"
)

// Paths inside the image.
const (
	BinDir      = "/usr/bin"
	CACertsPath = "/etc/ssl/certs/ca-certificates.crt"
)

// Platform is one image of the index: the platform and the static binaries
// (files on the build machine) installed under /usr/bin by their base names.
type Platform struct {
	OS           string // "linux"
	Architecture string // GOARCH: "amd64", "arm64"
	Binaries     []string
}

func (p Platform) String() string { return p.OS + "/" + p.Architecture }

// User is the image's non-root user, named in /etc/passwd and /etc/group and
// set as the config's User by number (a kubelet checks runAsNonRoot only
// against a numeric user).
type User struct {
	Name string
	UID  int
	GID  int
}

// Options say what Build puts in the image.
type Options struct {
	Platforms []Platform
	// CACerts is the CA bundle on the build machine (Debian's
	// /etc/ssl/certs/ca-certificates.crt), installed at CACertsPath.
	CACerts string
	// User runs the entrypoint; nil runs it as root.
	User *User
	// Entrypoint is the config's entrypoint, e.g. /usr/bin/stagehand-agent.
	Entrypoint []string
	// Version, Revision and Source label the index, each image and each
	// config (OCI annotations).
	Version, Revision, Source string
	// Created is every file's mtime, the config's creation time and the
	// created annotation: fixed (SOURCE_DATE_EPOCH) so that the same inputs
	// give the same digest. The zero value means the Unix epoch.
	Created time.Time
}

// Build returns the OCI index of one image for each platform.
func Build(o Options) (v1.ImageIndex, error) {
	if len(o.Platforms) == 0 {
		return nil, fmt.Errorf("no platforms")
	}
	if o.Version == "" {
		return nil, fmt.Errorf("no version")
	}
	if o.Created.IsZero() {
		o.Created = time.Unix(0, 0)
	}
	o.Created = o.Created.UTC().Truncate(time.Second)
	seen := map[string]bool{}
	for _, p := range o.Platforms {
		if seen[p.String()] {
			return nil, fmt.Errorf("platform %s given twice", p)
		}
		seen[p.String()] = true
	}
	base, err := baseLayer(o)
	if err != nil {
		return nil, err
	}
	anns := o.annotations()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.Platforms {
		img, err := o.image(p, base, anns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Architecture}},
		})
	}
	return mutate.Annotations(idx, anns).(v1.ImageIndex), nil
}

// image is one platform's image: the base layer, then its binaries.
func (o Options) image(p Platform, base v1.Layer, anns map[string]string) (v1.Image, error) {
	if len(p.Binaries) == 0 {
		return nil, fmt.Errorf("no binaries")
	}
	files := make([]file, 0, len(p.Binaries))
	names := map[string]bool{}
	for _, path := range p.Binaries {
		name := filepath.Base(path)
		if names[name] {
			return nil, fmt.Errorf("two binaries named %s", name)
		}
		names[name] = true
		files = append(files, file{name: BinDir + "/" + name, src: path, mode: 0o755})
	}
	if len(o.Entrypoint) > 0 && !names[strings.TrimPrefix(o.Entrypoint[0], BinDir+"/")] {
		return nil, fmt.Errorf("entrypoint %s: not one of the binaries in %s", o.Entrypoint[0], BinDir)
	}
	for _, path := range p.Binaries {
		if err := checkStatic(path, p); err != nil {
			return nil, err
		}
	}
	bin, err := newLayer(files, o.Created)
	if err != nil {
		return nil, err
	}
	cfg := &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Created:      v1.Time{Time: o.Created},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint: o.Entrypoint,
			Env:        []string{"PATH=" + BinDir},
			WorkingDir: "/",
			Labels:     anns,
		},
	}
	if o.User != nil {
		cfg.Config.User = strconv.Itoa(o.User.UID) + ":" + strconv.Itoa(o.User.GID)
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	created := v1.Time{Time: o.Created}
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: created, CreatedBy: "agentimage: /etc: CA certificates, users"}},
		mutate.Addendum{Layer: bin, History: v1.History{Created: created, CreatedBy: "agentimage: " + BinDir}},
	)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, anns).(v1.Image), nil
}

// baseLayer holds what every platform shares: the CA certificates, the
// users and groups, and /tmp.
func baseLayer(o Options) (v1.Layer, error) {
	if o.CACerts == "" {
		return nil, fmt.Errorf("no CA certificates")
	}
	if _, err := os.Stat(o.CACerts); err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n"
	group := "root:x:0:\n"
	if u := o.User; u != nil {
		if u.UID == 0 || u.Name == "" || u.Name == "root" {
			return nil, fmt.Errorf("user %q (uid %d): want a named non-root user", u.Name, u.UID)
		}
		passwd += fmt.Sprintf("%s:x:%d:%d:%s:/nonexistent:/sbin/nologin\n", u.Name, u.UID, u.GID, u.Name)
		group += fmt.Sprintf("%s:x:%d:\n", u.Name, u.GID)
	}
	return newLayer([]file{
		{name: CACertsPath, src: o.CACerts, mode: 0o644},
		{name: "/etc/passwd", data: []byte(passwd), mode: 0o644},
		{name: "/etc/group", data: []byte(group), mode: 0o644},
		{name: "/tmp", dir: true, mode: 0o1777},
	}, o.Created)
}

func (o Options) annotations() map[string]string {
	anns := map[string]string{
		AnnotationVersion: o.Version,
		AnnotationCreated: o.Created.Format(time.RFC3339),
	}
	if o.Revision != "" {
		anns[AnnotationRevision] = o.Revision
	}
	if o.Source != "" {
		anns[AnnotationSource] = o.Source
	}
	return anns
}
