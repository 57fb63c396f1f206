package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// writeSig writes a signature image of raw layers: payload and the
// annotation as given.
func writeSig(t *testing.T, tag name.Tag, layers ...[2]string) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer([]byte(l[0]), PayloadMediaType), Annotations: map[string]string{SignatureAnnotation: l[1]}})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

func sigOver(t *testing.T, k *ecdsa.PrivateKey, payload []byte) string {
	h := sha256.Sum256(payload)
	s, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(s)
}

func TestVerify(t *testing.T) {
	reg := testRegistry(t)
	release, other := newKey(t), newKey(t)
	mustSign := func(ref name.Reference, d v1.Hash, k crypto.Signer) {
		t.Helper()
		if _, err := Sign(ctx, ref, d, k); err != nil {
			t.Fatal(err)
		}
	}

	signed, signedD := pushRandom(t, reg+"/os:signed")
	mustSign(signed, signedD, release)
	unsigned, unsignedD := pushRandom(t, reg+"/os:unsigned")
	byOther, byOtherD := pushRandom(t, reg+"/os:other-key")
	mustSign(byOther, byOtherD, other)
	twoKeys, twoKeysD := pushRandom(t, reg+"/os:two-keys")
	mustSign(twoKeys, twoKeysD, other)
	mustSign(twoKeys, twoKeysD, release)

	// v1's signature image copied under v2's signature tag: a good
	// signature, for the wrong image.
	replayed, replayedD := pushRandom(t, reg+"/os:replayed")
	sigImg, err := remote.Image(SignatureTag(signed.Context(), signedD))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(SignatureTag(replayed.Context(), replayedD), sigImg); err != nil {
		t.Fatal(err)
	}

	// The right payload with a signature over another payload; a bad
	// annotation; a signature layer that is not an image signature.
	tampered, tamperedD := pushRandom(t, reg+"/os:tampered")
	pl, _ := NewPayload(tampered.Context(), tamperedD).Marshal()
	plOther, _ := NewPayload(tampered.Context(), signedD).Marshal()
	writeSig(t, SignatureTag(tampered.Context(), tamperedD), [2]string{string(pl), sigOver(t, release, plOther)}, [2]string{string(pl), "%%not base64"}, [2]string{"{}", sigOver(t, release, []byte("{}"))})

	// A multi-platform index signed at the index, as `cosign sign` does
	// for a tag naming an index.
	idx, err := random.Index(128, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	idxRef, _ := name.ParseReference(reg + "/os:multi")
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}
	idxD, _ := idx.Digest()
	im, _ := idx.IndexManifest()
	childD := im.Manifests[0].Digest
	mustSign(idxRef, idxD, release)

	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadRef, _ := name.ParseReference(dead.Addr().String() + "/os:v1")
	dead.Close()

	for _, tc := range []struct {
		name   string
		ref    name.Reference
		digest v1.Hash
		keys   []crypto.PublicKey
		opts   []Option
		err    error
		msg    string
	}{
		{name: "signed", ref: signed, digest: signedD, keys: []crypto.PublicKey{&release.PublicKey}},
		{name: "signed, by digest", ref: signed.Context().Digest(signedD.String()), digest: signedD, keys: []crypto.PublicKey{&release.PublicKey}},
		{name: "one of two keys", ref: signed, digest: signedD, keys: []crypto.PublicKey{&other.PublicKey, &release.PublicKey}},
		{name: "second signature of two", ref: twoKeys, digest: twoKeysD, keys: []crypto.PublicKey{&release.PublicKey}},
		{name: "index signature", ref: idxRef, digest: childD, keys: []crypto.PublicKey{&release.PublicKey}, opts: []Option{WithIndex(idxD)}},
		{name: "no signature", ref: unsigned, digest: unsignedD, keys: []crypto.PublicKey{&release.PublicKey}, err: ErrNoSignature, msg: "no tag sha256-" + unsignedD.Hex + ".sig"},
		{name: "index not trusted without WithIndex", ref: idxRef, digest: childD, keys: []crypto.PublicKey{&release.PublicKey}, err: ErrNoSignature, msg: "has no cosign signature"},
		{name: "index signature, wrong key", ref: idxRef, digest: childD, keys: []crypto.PublicKey{&other.PublicKey}, opts: []Option{WithIndex(idxD)}, err: ErrWrongKey, msg: "of " + childD.String() + " or its index " + idxD.String() + " in "},
		{name: "wrong key", ref: byOther, digest: byOtherD, keys: []crypto.PublicKey{&release.PublicKey}, err: ErrWrongKey, msg: "none of the 1 signatures"},
		{name: "payload for another digest", ref: replayed, digest: replayedD, keys: []crypto.PublicKey{&release.PublicKey}, err: ErrOtherDigest, msg: "for " + signedD.String() + ", not for " + replayedD.String()},
		{name: "tampered signatures", ref: tampered, digest: tamperedD, keys: []crypto.PublicKey{&release.PublicKey}, err: ErrWrongKey, msg: "none of the 3 signatures"},
		{name: "registry unreachable", ref: deadRef, digest: signedD, keys: []crypto.PublicKey{&release.PublicKey}, msg: "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := VerifyAny(ctx, tc.ref, tc.digest, tc.keys, tc.opts...)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if v.Fingerprint != Fingerprint(&release.PublicKey) || v.Payload.Digest != v.Digest {
					t.Errorf("verified %+v", v)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Verify = %+v, %v; want one line saying %q", v, err, tc.msg)
			}
			for _, e := range []error{ErrNoSignature, ErrWrongKey, ErrOtherDigest} {
				if errors.Is(err, e) != (e == tc.err) {
					t.Errorf("errors.Is(%v, %v) = %v", err, e, !(e == tc.err))
				}
			}
		})
	}

	if _, err := Verify(ctx, signed, signedD, &release.PublicKey); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestSignAppendsOnce(t *testing.T) {
	reg := testRegistry(t)
	a, b := newKey(t), newKey(t)
	ref, d := pushRandom(t, reg+"/os:v1")
	got, err := Digest(ctx, ref)
	if err != nil || got != d {
		t.Fatalf("Digest = %v, %v; want %v", got, err, d)
	}
	for i, k := range []*ecdsa.PrivateKey{a, b, a, b} {
		s, err := Sign(ctx, ref, d, k)
		if err != nil {
			t.Fatal(err)
		}
		if s.Already != (i >= 2) || s.Fingerprint != Fingerprint(&k.PublicKey) || s.Tag.TagStr() != "sha256-"+d.Hex+".sig" {
			t.Errorf("Sign #%d = %+v", i, s)
		}
	}
	img, err := remote.Image(SignatureTag(ref.Context(), d))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	if len(m.Layers) != 2 || m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Fatalf("signature image: %d layers, %s, config %s", len(m.Layers), m.MediaType, m.Config.MediaType)
	}
	for _, l := range m.Layers {
		if l.MediaType != PayloadMediaType || l.Annotations[SignatureAnnotation] == "" {
			t.Errorf("layer %+v", l)
		}
	}
	for _, k := range []*ecdsa.PrivateKey{a, b} {
		if _, err := Verify(ctx, ref, d, &k.PublicKey); err != nil {
			t.Error(err)
		}
	}
	if _, err := Digest(ctx, ref.Context().Digest("sha256:"+strings.Repeat("0", 64))); err == nil {
		t.Error("Digest of a missing image succeeded")
	}
}

// BenchmarkVerify measures one verification against a registry on
// 127.0.0.1: the signature image's manifest and layer fetched, ECDSA
// checked.
func BenchmarkVerify(b *testing.B) {
	reg := testRegistry(b)
	k := newKey(b)
	ref, d := pushRandom(b, reg+"/os:v1")
	if _, err := Sign(ctx, ref, d, k); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := Verify(ctx, ref, d, &k.PublicKey); err != nil {
			b.Fatal(err)
		}
	}
}
