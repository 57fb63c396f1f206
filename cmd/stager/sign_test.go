package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/stagehand-dev/stagehand/sign"
	"github.com/stagehand-dev/stagehand/sign/signtest"
)

// pushInstaller builds an installer image with stager image build and
// pushes it to ref; it returns the digest.
func pushInstaller(t *testing.T, ref, version string) string {
	t.Helper()
	k, i := artifacts(t)
	code, out, e := stager(t, "image", "build", "--kernel", k, "--initramfs", i, "--version", version, "--push", ref)
	if code != 0 {
		t.Fatalf("image build: %d %q %q", code, out, e)
	}
	return strings.Fields(out)[3]
}

func TestSignAndVerify(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	key, pub, k := signtest.KeyPair(t, dir, "release", []byte("s3cret"))
	_, otherPub, _ := signtest.KeyPair(t, dir, "other", []byte("s3cret"))
	fp := sign.Fingerprint(&k.PublicKey)
	pushInstaller(t, reg+"/stagehand/os:v2", "v2")
	pushInstaller(t, reg+"/stagehand/os:v3", "v3")
	layout := "oci:" + t.TempDir() + ":v2"
	k1, i1 := artifacts(t)
	if code, _, e := stager(t, "image", "build", "--kernel", k1, "--initramfs", i1, "--output", layout); code != 0 {
		t.Fatal(e)
	}
	policy := func(body string) string {
		p := filepath.Join(t.TempDir(), "policy.json")
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	needRelease := policy(`{"require": [{"prefix": "` + reg + `/stagehand/", "keys": ["` + pub + `"]}]}`)
	needOther := policy(`{"require": [{"prefix": "` + reg + `", "keys": ["` + otherPub + `"]}]}`)
	needAll := policy(`{"require": [{"prefix": "*", "keys": ["` + pub + `"]}]}`)
	notAKey := filepath.Join(dir, "notakey.pub")
	os.WriteFile(notAKey, []byte("hello"), 0o644)

	t.Setenv("COSIGN_PASSWORD", "s3cret")
	code, out, e := stager(t, "image", "sign", "--key", key, reg+"/stagehand/os:v2")
	if code != 0 || !strings.Contains(out, "signed "+reg+"/stagehand/os:v2 (sha256:") || !strings.Contains(out, "with key "+fp) {
		t.Fatalf("image sign: %d %q %q", code, out, e)
	}
	if code, out, _ := stager(t, "image", "sign", "--key", key, reg+"/stagehand/os:v2"); code != 0 || !strings.Contains(out, "already signed by key "+fp) {
		t.Errorf("second image sign: %d %q", code, out)
	}

	dsk := newDisk(t)
	code, out, e = stager(t, "--image", reg+"/stagehand/os:v2", "--verify-key", otherPub, "--verify-key", pub, "--policy", needRelease, "--disk", dsk)
	if code != 0 || !strings.Contains(out, "verified: cosign signature by key "+fp) {
		t.Fatalf("stage with --verify-key: %d %q %q", code, out, e)
	}
	code, out, _ = stager(t, "status", "--disk", dsk)
	if code != 0 || !strings.Contains(out, "signed:   by key "+fp+" (cosign signature verified before staging)") {
		t.Errorf("status:\n%s", out)
	}
	code, out, _ = stager(t, "status", "--disk", dsk, "--json")
	var st struct {
		Staged struct {
			SignedBy string `json:"signed_by"`
		}
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Staged.SignedBy != fp {
		t.Errorf("status --json: %v %q", err, out)
	}

	os.Unsetenv("COSIGN_PASSWORD")
	for _, tc := range []struct {
		args []string
		env  string // COSIGN_PASSWORD, "-" for unset
		code int
		msg  string
	}{
		{[]string{"--image", reg + "/stagehand/os:v3", "--verify-key", pub}, "-", 1, "no signature: " + reg + "/stagehand/os has no cosign signature for sha256:"},
		{[]string{"--image", reg + "/stagehand/os:v2", "--verify-key", otherPub}, "-", 1, "not signed by the key: none of the 1 signatures"},
		{[]string{"--image", reg + "/stagehand/os:v2", "--policy", needOther}, "-", 1, `rule "` + reg + `" requires a signature): not signed by the key`},
		{[]string{"--image", reg + "/stagehand/os:v3", "--policy", needRelease}, "-", 1, "no signature"},
		{[]string{"--image", layout, "--verify-key", pub}, "-", 2, "signatures need a registry reference: an OCI layout carries none"},
		{[]string{"--image", layout, "--policy", needAll}, "-", 1, "signatures need a registry reference: an OCI layout carries none, and policy " + needAll},
		{[]string{"--image", reg + "/stagehand/os:v2", "--verify-key", "/nonexistent.pub"}, "-", 1, "--verify-key: open /nonexistent.pub"},
		{[]string{"--image", reg + "/stagehand/os:v2", "--verify-key", notAKey}, "-", 1, "unusable key: no PEM block"},
		{[]string{"--image", reg + "/stagehand/os:v2", "--verify-key", key}, "-", 1, `PEM block is "ENCRYPTED SIGSTORE PRIVATE KEY", want "PUBLIC KEY"`},
		{[]string{"--image", reg + "/stagehand/os:v2", "--policy", "/nonexistent.json"}, "-", 1, "reading policy: open /nonexistent.json"},
		{[]string{"--image", reg + "/stagehand/os:v2", "--policy", notAKey}, "-", 1, "bad policy " + notAKey},
		{[]string{"image", "sign", reg + "/stagehand/os:v3"}, "s3cret", 2, "--key is required"},
		{[]string{"image", "sign", "--key", key, layout}, "s3cret", 2, "signatures live in a registry"},
		{[]string{"image", "sign", "--key", key, reg + "/stagehand/os:v3"}, "wrong", 1, "wrong password for the private key"},
		{[]string{"image", "sign", "--key", key, reg + "/stagehand/os:v3"}, "-", 1, "no password for " + key + ": set COSIGN_PASSWORD"},
		{[]string{"image", "sign", "--key", pub, reg + "/stagehand/os:v3"}, "", 1, `PEM block is "PUBLIC KEY"`},
		{[]string{"image", "sign", "--key", key, reg + "/stagehand/os:v9"}, "s3cret", 1, reg + "/stagehand/os:v9: not found in the registry " + reg},
	} {
		if tc.env == "-" {
			os.Unsetenv("COSIGN_PASSWORD")
		} else {
			os.Setenv("COSIGN_PASSWORD", tc.env)
		}
		before := hashFile(t, dsk)
		args := tc.args
		if args[0] == "--image" {
			args = append(args, "--disk", dsk)
		}
		code, _, errOut := stager(t, args...)
		if code != tc.code || !strings.Contains(errOut, tc.msg) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("stager %s: exit %d, stderr %q; want exit %d and one line with %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.msg)
		}
		if hashFile(t, dsk) != before {
			t.Errorf("stager %s changed the disk", strings.Join(tc.args, " "))
		}
	}
}
