package agentimage

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/stagehand-dev/stagehand/internal/gobuild"
)

const hostCACerts = "/etc/ssl/certs/ca-certificates.crt"

var binDir string // TestMain's, for the binaries built once per test process

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "agentimage-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

var builds sync.Map // GOARCH → *built

type built struct {
	once sync.Once
	path string
	err  error
}

// imageBinaries are the commands make image puts in the image.
var imageBinaries = []string{"stagehand-agent", "stager"}

// binaries builds imageBinaries as make image does (static, -trimpath) for
// linux/arch, once per test process, and returns their paths: the arm64
// build is a cross-compile of both commands (cold, about a minute and a
// half each arch here; then the Go build cache's link only).
func binaries(t *testing.T, arch string) []string {
	t.Helper()
	v, _ := builds.LoadOrStore(arch, &built{})
	b := v.(*built)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, "linux-"+arch)
		start := time.Now()
		var pkgs []string
		for _, c := range imageBinaries {
			pkgs = append(pkgs, "./cmd/"+c)
		}
		b.err = gobuild.Static("..", arch, b.path+"/", pkgs...)
		t.Logf("built %v for linux/%s in %v", imageBinaries, arch, time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	var out []string
	for _, c := range imageBinaries {
		out = append(out, filepath.Join(b.path, c))
	}
	return out
}

func testOptions(t *testing.T) Options {
	return Options{
		Platforms: []Platform{
			{OS: "linux", Architecture: "amd64", Binaries: binaries(t, "amd64")},
			{OS: "linux", Architecture: "arm64", Binaries: binaries(t, "arm64")},
		},
		CACerts:    hostCACerts,
		User:       &User{Name: "stagehand", UID: 65532, GID: 65532},
		Entrypoint: []string{"/usr/bin/stagehand-agent"},
		Version:    "v0.5.0",
		Revision:   "0123456789abcdef0123456789abcdef01234567",
		Source:     "https://github.com/stagehand-dev/stagehand",
		Created:    time.Unix(1767225600, 0),
	}
}

// TestImage builds the image into an OCI layout and checks what a node
// pulls from it.
func TestImage(t *testing.T) {
	o := testOptions(t)
	idx, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "image")
	digest, err := WriteLayout(dir, idx, o.Version)
	if err != nil {
		t.Fatal(err)
	}

	// Read it back from the layout, as a node's runtime would.
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].Digest != digest || tm.Manifests[0].Annotations[AnnotationRefName] != "v0.5.0" {
		t.Fatalf("layout's index.json lists %+v, want the index %s tagged v0.5.0", tm.Manifests, digest)
	}
	got, err := top.ImageIndex(digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Fatalf("the layout's index does not validate: %v", err)
	}
	im, err := got.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	wantAnns := map[string]string{
		AnnotationVersion:  "v0.5.0",
		AnnotationRevision: o.Revision,
		AnnotationSource:   o.Source,
		AnnotationCreated:  "2026-01-01T00:00:00Z",
	}
	if diff := cmp.Diff(wantAnns, im.Annotations); diff != "" {
		t.Errorf("index annotations (-want, +got):\n%s", diff)
	}
	var plats []string
	for _, d := range im.Manifests {
		plats = append(plats, d.Platform.String())
	}
	if diff := cmp.Diff([]string{"linux/amd64", "linux/arm64"}, plats); diff != "" {
		t.Errorf("index platforms (-want, +got):\n%s", diff)
	}

	for _, d := range im.Manifests {
		arch := d.Platform.Architecture
		t.Run(arch, func(t *testing.T) {
			img, err := got.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			m, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantAnns, m.Annotations); diff != "" {
				t.Errorf("manifest annotations (-want, +got):\n%s", diff)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantAnns, cf.Config.Labels); diff != "" {
				t.Errorf("config labels (-want, +got):\n%s", diff)
			}
			if cf.Architecture != arch || cf.OS != "linux" {
				t.Errorf("config says %s/%s, want linux/%s", cf.OS, cf.Architecture, arch)
			}
			if !cf.Created.Time.Equal(o.Created) {
				t.Errorf("config created %v, want %v (SOURCE_DATE_EPOCH)", cf.Created, o.Created)
			}
			if cf.Config.User != "65532:65532" {
				t.Errorf("config user %q, want 65532:65532 (non-root, numeric for runAsNonRoot)", cf.Config.User)
			}

			fs := extract(t, img, o.Created)
			for _, c := range imageBinaries {
				bin := fs["usr/bin/"+c]
				if bin == nil || bin.hdr.Mode != 0o755 {
					t.Fatalf("/usr/bin/%s: %+v, want a file of mode 0755", c, bin)
				}
				f, err := elf.NewFile(bytes.NewReader(bin.data))
				if err != nil {
					t.Fatalf("/usr/bin/%s: %v", c, err)
				}
				if want := machines[arch]; f.Machine != want {
					t.Errorf("/usr/bin/%s is for %v, want %v", c, f.Machine, want)
				}
				for _, p := range f.Progs {
					if p.Type == elf.PT_INTERP {
						t.Errorf("/usr/bin/%s has a PT_INTERP: not static", c)
					}
				}
			}
			host, err := os.ReadFile(hostCACerts)
			if err != nil {
				t.Fatal(err)
			}
			if c := fs["etc/ssl/certs/ca-certificates.crt"]; c == nil || !bytes.Equal(c.data, host) {
				t.Errorf("/etc/ssl/certs/ca-certificates.crt is not the build machine's %s", hostCACerts)
			}
			if p := fs["etc/passwd"]; p == nil || !strings.Contains(string(p.data), "\nstagehand:x:65532:65532:") {
				t.Errorf("/etc/passwd has no stagehand user 65532: %+v", p)
			}
			if g := fs["etc/group"]; g == nil || !strings.Contains(string(g.data), "\nstagehand:x:65532:") {
				t.Errorf("/etc/group has no stagehand group 65532: %+v", g)
			}
			if tmp := fs["tmp"]; tmp == nil || tmp.hdr.Typeflag != tar.TypeDir || tmp.hdr.Mode != 0o1777 {
				t.Errorf("/tmp: %+v, want a directory of mode 1777", tmp)
			}

			if arch != runtime.GOARCH || runtime.GOOS != "linux" {
				return
			}
			// The binaries as extracted from the layer run on the host.
			for _, c := range imageBinaries {
				exe := filepath.Join(t.TempDir(), c)
				if err := os.WriteFile(exe, fs["usr/bin/"+c].data, 0o755); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command(exe, "--help").CombinedOutput()
				if err != nil || !strings.Contains(string(out), "Usage:") {
					t.Errorf("%s --help from the %s image: %v\n%s", c, arch, err, out)
				}
			}
		})
	}

	t.Run("push", func(t *testing.T) {
		reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer reg.Close()
		ref := strings.TrimPrefix(reg.URL, "http://") + "/stagehand/agent:v0.5.0"
		d, err := Push(context.Background(), idx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if d.DigestStr() != digest.String() || !strings.HasSuffix(d.Context().Name(), "/stagehand/agent") {
			t.Errorf("Push returned %s, want REPO@%s", d, digest)
		}
		pulled, err := remote.Index(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Index(pulled); err != nil {
			t.Errorf("the pushed index does not validate: %v", err)
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		// The same contents from other paths, with other modes and mtimes.
		o2 := o
		o2.Platforms = nil
		for _, p := range o.Platforms {
			dir := t.TempDir()
			var cps []string
			for _, bin := range p.Binaries {
				cp := filepath.Join(dir, filepath.Base(bin))
				b, err := os.ReadFile(bin)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(cp, b, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(cp, time.Now(), time.Unix(42, 0)); err != nil {
					t.Fatal(err)
				}
				cps = append(cps, cp)
			}
			o2.Platforms = append(o2.Platforms, Platform{OS: p.OS, Architecture: p.Architecture, Binaries: cps})
		}
		idx2, err := Build(o2)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := idx2.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if d2 != digest {
			t.Errorf("a second build has digest %s, the first %s", d2, digest)
		}
	})
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

// extract reads img's file system and checks every entry is reproducible:
// sorted within its layer, owned by 0:0 with no names, mtime created.
func extract(t *testing.T, img v1.Image, created time.Time) map[string]*entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name)
			if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(created) {
				t.Errorf("layer %d: %s: owner %d:%d (%q:%q), mtime %v; want 0:0, no names, %v", i, h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime, created)
			}
		}
		rc.Close()
		if !sort.StringsAreSorted(names) {
			t.Errorf("layer %d: entries not sorted: %q", i, names)
		}
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	fs := map[string]*entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fs
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		fs[h.Name] = &entry{hdr: h, data: b}
	}
}

// TestBuildRefuses checks the inputs Build refuses, without building a
// binary: the host's /bin/true is a dynamic ELF of the host's architecture.
func TestBuildRefuses(t *testing.T) {
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if other == "" {
		t.Fatalf("the cases assume an amd64 or arm64 host, not %s", runtime.GOARCH)
	}
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plat := func(arch string, bins ...string) []Platform {
		return []Platform{{OS: "linux", Architecture: arch, Binaries: bins}}
	}
	ok := Options{CACerts: hostCACerts, Version: "v0.5.0"}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no platforms", func(o *Options) {}, "no platforms"},
		{"no version", func(o *Options) { o.Version = ""; o.Platforms = plat(runtime.GOARCH, "/bin/true") }, "no version"},
		{"no binaries", func(o *Options) { o.Platforms = plat(runtime.GOARCH) }, "no binaries"},
		{"dynamic", func(o *Options) { o.Platforms = plat(runtime.GOARCH, "/bin/true") }, "dynamically linked"},
		{"other architecture", func(o *Options) { o.Platforms = plat(other, "/bin/true") }, "binary, not"},
		{"not ELF", func(o *Options) { o.Platforms = plat(runtime.GOARCH, text) }, "not an ELF executable"},
		{"unknown architecture", func(o *Options) { o.Platforms = plat("mips", "/bin/true") }, `architecture "mips"`},
		{"not linux", func(o *Options) {
			o.Platforms = []Platform{{OS: "windows", Architecture: "amd64", Binaries: []string{"/bin/true"}}}
		}, `os "windows"`},
		{"same name twice", func(o *Options) { o.Platforms = plat(runtime.GOARCH, "/bin/true", "/usr/bin/true") }, "two binaries named true"},
		{"platform twice", func(o *Options) {
			o.Platforms = append(plat(runtime.GOARCH, text), plat(runtime.GOARCH, text)...)
		}, "given twice"},
		{"no CA certificates", func(o *Options) { o.CACerts = ""; o.Platforms = plat(runtime.GOARCH, text) }, "no CA certificates"},
		{"missing CA certificates", func(o *Options) { o.CACerts = "/nonexistent"; o.Platforms = plat(runtime.GOARCH, text) }, "no such file"},
		{"entrypoint not in the image", func(o *Options) {
			o.Entrypoint = []string{"/usr/bin/stagehand-agent"}
			o.Platforms = plat(runtime.GOARCH, text)
		}, "entrypoint /usr/bin/stagehand-agent: not one of the binaries"},
		{"root user", func(o *Options) { o.User = &User{Name: "root"}; o.Platforms = plat(runtime.GOARCH, text) }, "non-root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.edit(&o)
			_, err := Build(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestWriteLayoutRefusesNonEmpty keeps a layout from mixing two builds.
func TestWriteLayoutRefusesNonEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteLayout(dir, nil, "v0.5.0"); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("WriteLayout into a non-empty directory: %v, want an error saying so", err)
	}
}
