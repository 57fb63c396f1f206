package main

import (
	"bufio"
	"context"

	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stagehand-dev/stagehand/sign"
)

// cosignVersion is the cosign the interop test builds from its Go module.
const cosignVersion = "v2.6.5"

// cosignBinary returns build/cosign at the root of the repository, built
// with `go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5` unless
// that version is there already (a cold build downloads about 250 modules
// from the Go module proxy and compiles for about 4 minutes on 2 cores). A
// failed build fails the test: it never skips.
func cosignBinary(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		if root == filepath.Dir(root) {
			t.Fatalf("no go.mod above %s", wd)
		}
		root = filepath.Dir(root)
	}
	bin := filepath.Join(root, "build", "cosign")
	if out, err := exec.Command(bin, "version").CombinedOutput(); err == nil && strings.Contains(string(out), "GitVersion:    "+cosignVersion+"\n") {
		return bin
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-time.Minute))
		defer cancel()
	}
	start := time.Now()
	args := []string{"install", "github.com/sigstore/cosign/v2/cmd/cosign@" + cosignVersion}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(bin), "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		t.Fatalf("building cosign failed after %s (the interop test needs the real cosign; retry with: GOBIN=%s %s %s):\n%s\n%v",
			time.Since(start).Round(time.Second), filepath.Dir(bin), goCmd, strings.Join(args, " "), strings.Join(lines, "\n"), err)
	}
	t.Logf("built cosign %s into %s in %s", cosignVersion, bin, time.Since(start).Round(time.Second))
	return bin
}

// egressGuard is an HTTP proxy on 127.0.0.1 that cosign is pointed at
// (HTTP_PROXY, HTTPS_PROXY): Go never proxies loopback, so a request
// reaching it is one that would have left the machine (Rekor, Fulcio, TUF).
// It refuses it and records where it was going.
type egressGuard struct {
	addr string
	mu   sync.Mutex
	hits []string
}

func newEgressGuard(t *testing.T) *egressGuard {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &egressGuard{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				what := "unreadable request"
				if r, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					what = r.Method + " " + r.Host + r.URL.Path
				}
				g.mu.Lock()
				g.hits = append(g.hits, what)
				g.mu.Unlock()
				io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}()
		}
	}()
	return g
}

func (g *egressGuard) check(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.hits) > 0 {
		t.Errorf("cosign tried to leave 127.0.0.1: %s", strings.Join(g.hits, "; "))
	}
}

// cosignRunner runs cosign in dir with a clean environment: its own HOME,
// Docker config and TUF root, the password, and every proxy pointing at the
// guard.
type cosignRunner struct {
	bin, dir string
	guard    *egressGuard
}

func (c *cosignRunner) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	home := filepath.Join(c.dir, "home")
	os.MkdirAll(filepath.Join(home, ".docker"), 0o700)
	proxy := "http://" + c.guard.addr
	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.dir
	cmd.Env = []string{
		"PATH=/usr/bin:/bin", "HOME=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker"),
		"TUF_ROOT=" + filepath.Join(home, "tuf"), "TMPDIR=" + c.dir, "COSIGN_PASSWORD=interop",
		"HTTP_PROXY=" + proxy, "HTTPS_PROXY=" + proxy, "http_proxy=" + proxy, "https_proxy=" + proxy,
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	c.guard.mu.Lock()
	before := len(c.guard.hits)
	c.guard.mu.Unlock()
	err := cmd.Run()
	c.guard.mu.Lock()
	for i := before; i < len(c.guard.hits); i++ {
		c.guard.hits[i] += " (from cosign " + strings.Join(args, " ") + ")"
	}
	c.guard.mu.Unlock()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cosign %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

func (c *cosignRunner) ok(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := c.run(t, args...)
	if code != 0 {
		t.Fatalf("cosign %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestCosignInterop signs with the real cosign and verifies with stager,
// and the other way round, on a registry on 127.0.0.1; cosign makes the
// keys, and nothing may leave 127.0.0.1.
func TestCosignInterop(t *testing.T) {
	bin := cosignBinary(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	guard := newEgressGuard(t)
	defer guard.check(t)
	cosign := &cosignRunner{bin: bin, dir: dir, guard: guard}

	start := time.Now()
	cosign.ok(t, "generate-key-pair")
	cosign.ok(t, "generate-key-pair", "--output-key-prefix", "other")
	t.Logf("cosign generate-key-pair twice: %s", time.Since(start).Round(time.Millisecond))
	key, pub := filepath.Join(dir, "cosign.key"), filepath.Join(dir, "cosign.pub")
	otherKey, otherPub := filepath.Join(dir, "other.key"), filepath.Join(dir, "other.pub")
	fingerprint := func(file string) string {
		b, _ := os.ReadFile(file)
		k, err := sign.LoadPublicKey(b)
		if err != nil {
			t.Fatalf("cosign's public key %s: %v", file, err)
		}
		return sign.Fingerprint(k)
	}
	fp, otherFP := fingerprint(pub), fingerprint(otherPub)
	// cosign verify fetches Sigstore's trusted root over TUF unless it is
	// given one, although a key and --insecure-ignore-tlog need none of it:
	// an empty trusted root keeps it on 127.0.0.1.
	emptyRoot := filepath.Join(dir, "trusted_root.json")
	os.WriteFile(emptyRoot, []byte(`{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`), 0o644)
	v2 := pushInstaller(t, reg+"/stagehand/os:v2", "v2")
	v3 := pushInstaller(t, reg+"/stagehand/os:v3", "v3")
	pushArch(t, reg+"/stagehand/os:amd64-unsigned", "amd64", "unsigned")

	t.Run("cosign signs, stager verifies", func(t *testing.T) {
		start := time.Now()
		cosign.ok(t, "sign", "--key", key, "--tlog-upload=false", "--yes", reg+"/stagehand/os@"+v2)
		t.Logf("cosign sign: %s", time.Since(start).Round(time.Millisecond))

		// Byte for byte the payload stager would sign.
		ref, _ := name.ParseReference(reg + "/stagehand/os:v2")
		h, _ := v1.NewHash(v2)
		sigImg, err := remote.Image(sign.SignatureTag(ref.Context(), h))
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := sigImg.Layers()
		rc, _ := layers[0].Compressed()
		got, _ := io.ReadAll(rc)
		rc.Close()
		want, _ := sign.NewPayload(ref.Context(), h).Marshal()
		if string(got) != string(want) {
			t.Errorf("cosign's payload\n %s\nstager's\n %s", got, want)
		}

		// With annotations (the payload's "optional"), by digest.
		v5 := pushArch(t, reg+"/stagehand/os:v5", "amd64", "v5")
		cosign.ok(t, "sign", "--key", key, "--tlog-upload=false", "--yes", "-a", "release=v5", "-a", "channel=stable", reg+"/stagehand/os@"+v5)
		if code, out, e := stager(t, "--image", reg+"/stagehand/os@"+v5, "--verify-key", pub, "--disk", newDisk(t)); code != 0 || !strings.Contains(out, fp) {
			t.Errorf("stager --verify-key on an annotated cosign signature: %d %q %q", code, out, e)
		}

		dsk := newDisk(t)
		start = time.Now()
		code, out, e := stager(t, "--image", reg+"/stagehand/os:v2", "--verify-key", pub, "--disk", dsk)
		if code != 0 || !strings.Contains(out, "verified: cosign signature by key "+fp) {
			t.Fatalf("stager --verify-key on cosign's signature: %d %q %q", code, out, e)
		}
		t.Logf("stager --image --verify-key (pull, verify, stage): %s", time.Since(start).Round(time.Millisecond))
		before := hashFile(t, dsk)
		code, _, e = stager(t, "--image", reg+"/stagehand/os:v3", "--verify-key", pub, "--disk", dsk)
		if code != 1 || !strings.Contains(e, "no signature") {
			t.Errorf("unsigned v3: %d %q", code, e)
		}
		code, _, e = stager(t, "--image", reg+"/stagehand/os:v2", "--verify-key", otherPub, "--disk", newDisk(t))
		if code != 1 || !strings.Contains(e, "not signed by the key") {
			t.Errorf("v2 with the other key: %d %q", code, e)
		}
		if hashFile(t, dsk) != before {
			t.Error("a refused stage changed the disk")
		}
	})

	t.Run("stager signs, cosign verifies", func(t *testing.T) {
		t.Setenv("COSIGN_PASSWORD", "interop")
		code, out, e := stager(t, "image", "sign", "--key", key, reg+"/stagehand/os:v3")
		if code != 0 || !strings.Contains(out, v3) || !strings.Contains(out, fp) {
			t.Fatalf("stager image sign with cosign's key: %d %q %q", code, out, e)
		}
		start := time.Now()
		code, out, e = cosign.run(t, "verify", "--key", pub, "--insecure-ignore-tlog=true", "--trusted-root", emptyRoot, reg+"/stagehand/os:v3")
		if code != 0 {
			t.Fatalf("cosign verify of stager's signature: exit %d\n%s%s", code, out, e)
		}
		t.Logf("cosign verify: %s\n%s", time.Since(start).Round(time.Millisecond), e)
		if !strings.Contains(out, `"docker-manifest-digest":"`+v3+`"`) {
			t.Errorf("cosign verify printed %q", out)
		}
		if code, _, e := cosign.run(t, "verify", "--key", otherPub, "--insecure-ignore-tlog=true", "--trusted-root", emptyRoot, reg+"/stagehand/os:v3"); code == 0 {
			t.Errorf("cosign verify accepted v3 with the other key: %s", e)
		}
		if code, _, e := cosign.run(t, "verify", "--key", pub, "--insecure-ignore-tlog=true", "--trusted-root", emptyRoot, reg+"/stagehand/os:amd64-unsigned"); code == 0 {
			t.Errorf("cosign verify accepted an unsigned image: %s", e)
		}
		// Appended to the signature image cosign wrote for v2: both verify.
		code, out, e = stager(t, "image", "sign", "--key", otherKey, reg+"/stagehand/os:v2")
		if code != 0 || !strings.Contains(out, otherFP) {
			t.Fatalf("stager image sign v2 with the other key: %d %q %q", code, out, e)
		}
		cosign.ok(t, "verify", "--key", otherPub, "--insecure-ignore-tlog=true", "--trusted-root", emptyRoot, reg+"/stagehand/os:v2")
		cosign.ok(t, "verify", "--key", pub, "--insecure-ignore-tlog=true", "--trusted-root", emptyRoot, reg+"/stagehand/os:v2")
		if code, out, e := stager(t, "--image", reg+"/stagehand/os:v2", "--verify-key", otherPub, "--disk", newDisk(t)); code != 0 || !strings.Contains(out, otherFP) {
			t.Errorf("stager --verify-key after appending: %d %q %q", code, out, e)
		}
	})

	t.Run("cosign signs an index, stager stages the image for its platform", func(t *testing.T) {
		amd, arm := pushInstaller(t, reg+"/stagehand/os:amd64", "v4"), pushArch(t, reg+"/stagehand/os:arm64", "arm64", "v4")
		idx := mutate.IndexMediaType(empty.Index, "application/vnd.oci.image.index.v1+json")
		for _, p := range []struct{ digest, arch string }{{amd, "amd64"}, {arm, "arm64"}} {
			r, _ := name.ParseReference(reg + "/stagehand/os@" + p.digest)
			img, err := remote.Image(r)
			if err != nil {
				t.Fatal(err)
			}
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: p.arch}}})
		}
		r, _ := name.ParseReference(reg + "/stagehand/os:v4")
		if err := remote.WriteIndex(r, idx); err != nil {
			t.Fatal(err)
		}
		d, _ := idx.Digest()
		cosign.ok(t, "sign", "--key", key, "--tlog-upload=false", "--yes", reg+"/stagehand/os@"+d.String())
		code, out, e := stager(t, "--image", reg+"/stagehand/os:v4", "--platform", "linux/amd64", "--verify-key", pub, "--disk", newDisk(t))
		if code != 0 || !strings.Contains(out, "("+amd+")") || !strings.Contains(out, fp) {
			t.Errorf("stager on cosign's index signature: %d %q %q", code, out, e)
		}
	})
}

// pushArch pushes an installer image for arch and version and returns its
// digest.
func pushArch(t *testing.T, ref, arch, version string) string {
	t.Helper()
	k, i := artifacts(t)
	code, out, e := stager(t, "image", "build", "--kernel", k, "--initramfs", i, "--arch", arch, "--version", version, "--push", ref)
	if code != 0 {
		t.Fatalf("image build: %d %q %q", code, out, e)
	}
	return strings.Fields(out)[3]
}
