package stage

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/sign"
)

var ctx = context.Background()

func newSigningKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signImage signs what ref names now (an index's digest for an index, as
// cosign does).
func signImage(t testing.TB, ref string, k *ecdsa.PrivateKey) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sign.Digest(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.Sign(ctx, r, d, k); err != nil {
		t.Fatal(err)
	}
	return d
}

// replaySignature signs from and copies its signature image to to's
// signature tag: a valid signature whose payload names another digest.
func replaySignature(t testing.TB, from, to string, k *ecdsa.PrivateKey) {
	t.Helper()
	fd := signImage(t, from, k)
	fr, _ := name.ParseReference(from)
	tr, _ := name.ParseReference(to)
	td, err := sign.Digest(ctx, tr)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(sign.SignatureTag(fr.Context(), fd))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(sign.SignatureTag(tr.Context(), td), img); err != nil {
		t.Fatal(err)
	}
}

// writePolicy writes a policy with one rule and its key, and loads it.
func writePolicy(t testing.TB, prefix string, pub crypto.PublicKey) *sign.Policy {
	t.Helper()
	dir := t.TempDir()
	b, err := sign.MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "release.pub"), b, 0o644)
	path := filepath.Join(dir, "policy.json")
	os.WriteFile(path, []byte(`{"require": [{"prefix": "`+prefix+`", "keys": ["release.pub"]}]}`), 0o644)
	p, err := sign.LoadPolicy(path, false)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func stagedRecord(t *testing.T, dsk string) *meta.Staged {
	t.Helper()
	st, err := ReadStatus(ctx, dsk)
	if err != nil || st.Staged == nil {
		t.Fatalf("ReadStatus: %v, %+v", err, st)
	}
	return st.Staged
}

func TestStageSigned(t *testing.T) {
	reg := testRegistry(t, "", "")
	release, stranger := newSigningKey(t), newSigningKey(t)
	fp := sign.Fingerprint(&release.PublicKey)
	v2 := newArtifacts(40, mib, 2*mib, "v2")
	push(t, reg+"/stagehand/os:v2", buildImage(t, v2, "amd64"), nil)
	signImage(t, reg+"/stagehand/os:v2", release)
	signImage(t, reg+"/stagehand/os:v2", stranger)
	v3 := newArtifacts(41, mib, 2*mib, "v3")
	pushIndex(t, reg+"/stagehand/os:v3", map[string]v1Image{"amd64": buildImage(t, v3, "amd64"), "arm64": buildImage(t, v3, "arm64")})
	signImage(t, reg+"/stagehand/os:v3", release) // the index, as cosign does

	keys := []crypto.PublicKey{&stranger.PublicKey, &release.PublicKey}
	t.Run("verify key", func(t *testing.T) {
		dsk := testDisk(t, 32*mib)
		res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2", VerifyKeys: keys[1:]})
		if res.Staged.SignedBy != fp || stagedRecord(t, dsk).SignedBy != fp {
			t.Errorf("signed by %q, want %q", res.Staged.SignedBy, fp)
		}
		checkStaged(t, dsk, v2, reg+"/stagehand/os:v2")
	})
	t.Run("index signed, image picked from it", func(t *testing.T) {
		dsk := testDisk(t, 32*mib)
		res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v3", VerifyKeys: keys})
		if res.Staged.SignedBy != fp {
			t.Errorf("signed by %q, want %q", res.Staged.SignedBy, fp)
		}
	})
	t.Run("policy and verify key", func(t *testing.T) {
		dsk := testDisk(t, 32*mib)
		res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2", VerifyKeys: keys[:1], Policy: writePolicy(t, reg+"/stagehand/", &release.PublicKey)})
		if want := sign.Fingerprint(&stranger.PublicKey) + "," + fp; res.Staged.SignedBy != want {
			t.Errorf("signed by %q, want %q", res.Staged.SignedBy, want)
		}
	})
	t.Run("policy not matching", func(t *testing.T) {
		dsk := testDisk(t, 32*mib)
		res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2", Policy: writePolicy(t, reg+"/other/", &stranger.PublicKey)})
		if res.Staged.SignedBy != "" {
			t.Errorf("signed by %q, want nothing checked", res.Staged.SignedBy)
		}
	})
	t.Run("verified after staging unverified", func(t *testing.T) {
		dsk := testDisk(t, 32*mib)
		stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2"})
		res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2", VerifyKeys: keys[1:]})
		if !res.AlreadyStaged || stagedRecord(t, dsk).SignedBy != fp {
			t.Errorf("already staged %v, record signed by %q", res.AlreadyStaged, stagedRecord(t, dsk).SignedBy)
		}
	})
	t.Run("error is one line", func(t *testing.T) {
		_, err := Stage(ctx, Options{Disk: testDisk(t, 32*mib), Image: reg + "/stagehand/os:v2", VerifyKeys: []crypto.PublicKey{&newSigningKey(t).PublicKey}})
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "refusing "+reg+"/stagehand/os:v2 (--verify-key requires a signature): not signed by the key: none of the 2 signatures") {
			t.Errorf("Stage = %v", err)
		}
	})
}
