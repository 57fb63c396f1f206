package sign

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestPayloadIsCosigns checks the bytes against what cosign 2.x signs (the
// JSON of sigstore's payload.SimpleContainerImage for the same image).
func TestPayloadIsCosigns(t *testing.T) {
	repo, _ := name.NewRepository("127.0.0.1:5000/stagehand/os")
	b, err := NewPayload(repo, v1.Hash{Algorithm: "sha256", Hex: hex64}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/stagehand/os"},"image":{"docker-manifest-digest":"sha256:` + hex64 + `"},"type":"cosign container image signature"},"optional":null}`
	if string(b) != want {
		t.Errorf("payload\n got %s\nwant %s", b, want)
	}
	p, err := ParsePayload(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.DockerReference != repo.Name() || p.Digest.Hex != hex64 || p.Optional != nil {
		t.Errorf("parsed %+v", p)
	}
}

func TestParsePayload(t *testing.T) {
	doc := func(typ, digest, optional string) string {
		return `{"critical":{"identity":{"docker-reference":"r/x"},"image":{"docker-manifest-digest":"` + digest + `"},"type":"` + typ + `"},"optional":` + optional + `}`
	}
	good := "sha256:" + hex64
	for _, tc := range []struct {
		name, in string
		want     *Payload
		err      string
	}{
		{"cosign", doc(PayloadType, good, "null"), &Payload{DockerReference: "r/x", Digest: v1.Hash{Algorithm: "sha256", Hex: hex64}}, ""},
		{"annotations", doc(PayloadType, good, `{"release":"v2","n":1}`), &Payload{DockerReference: "r/x", Digest: v1.Hash{Algorithm: "sha256", Hex: hex64}, Optional: map[string]any{"release": "v2", "n": 1.0}}, ""},
		{"unknown fields ignored", `{"critical":{"identity":{"docker-reference":"r/x"},"image":{"docker-manifest-digest":"` + good + `"},"type":"` + PayloadType + `","x":1},"y":[]}`, &Payload{DockerReference: "r/x", Digest: v1.Hash{Algorithm: "sha256", Hex: hex64}}, ""},
		{"atomic type", doc("atomic container signature", good, "null"), nil, `type is "atomic container signature"`},
		{"no type", `{"critical":{"image":{"docker-manifest-digest":"` + good + `"}}}`, nil, "type is \"\""},
		{"sha512", doc(PayloadType, "sha512:"+hex64+hex64, "null"), nil, "docker-manifest-digest"},
		{"short digest", doc(PayloadType, "sha256:abc", "null"), nil, "docker-manifest-digest"},
		{"upper-case digest", doc(PayloadType, "sha256:"+strings.ToUpper(hex64), "null"), nil, "non-hex"},
		{"no digest", doc(PayloadType, "", "null"), nil, "docker-manifest-digest"},
		{"trailing data", doc(PayloadType, good, "null") + "{}", nil, "data after"},
		{"not json", "sha256:" + hex64, nil, "invalid character"},
		{"array", "[]", nil, "cannot unmarshal"},
		{"huge", `{"optional":"` + strings.Repeat("x", MaxPayload) + `"}`, nil, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePayload([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrBadPayload) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParsePayload = %+v, %v; want an ErrBadPayload saying %q", p, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, p); diff != "" {
				t.Errorf("(-want, +got):\n%s", diff)
			}
		})
	}
}

// FuzzParsePayload: a payload that parses re-encodes to bytes that parse
// to the same payload, and re-encoding is stable.
func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/stagehand/os"},"image":{"docker-manifest-digest":"sha256:` + hex64 + `"},"type":"cosign container image signature"},"optional":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePayload(b)
		if err != nil {
			return
		}
		b2, err := p.Marshal()
		if err != nil {
			t.Fatalf("a parsed payload does not marshal: %v", err)
		}
		p2, err := ParsePayload(b2)
		if err != nil {
			t.Fatalf("re-encoded payload does not parse: %v\n%s", err, b2)
		}
		if diff := cmp.Diff(p, p2); diff != "" {
			t.Fatalf("round trip (-first, +second):\n%s", diff)
		}
		b3, _ := p2.Marshal()
		if string(b2) != string(b3) {
			t.Fatalf("unstable encoding:\n%s\n%s", b2, b3)
		}
	})
}
