package sign

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestParsePolicyRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in, msg string }{
		{"not JSON", `{`, "unexpected EOF"},
		{"typo in a field", `{"requires": []}`, `unknown field "requires"`},
		{"typo in a rule", `{"require": [{"prefix": "a.io", "key": ["k.pub"]}]}`, `unknown field "key"`},
		{"no keys", `{"require": [{"prefix": "a.io"}]}`, `rule "a.io" names no keys`},
		{"empty prefix", `{"require": [{"prefix": "", "keys": ["k"]}]}`, "empty prefix"},
		{"bad repository", `{"require": [{"prefix": "a.io/UPPER", "keys": ["k"]}]}`, `prefix "a.io/UPPER"`},
		{"two rules, one scope", `{"require": [{"prefix": "a.io/x/", "keys": ["k"]}, {"prefix": "a.io/x", "keys": ["k"]}]}`, "two rules"},
		{"trailing data", `{"require": []} []`, "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tc.in), "p.json")
			if err == nil || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "p.json") {
				t.Fatalf("ParsePolicy = %v; want an ErrPolicy naming p.json and saying %q", err, tc.msg)
			}
		})
	}
}

func TestPolicyRule(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"require": [
		{"prefix": "127.0.0.1:5000/stagehand/", "keys": ["k"]},
		{"prefix": "127.0.0.1:5000/stagehand/os-debug", "keys": ["k"]},
		{"prefix": "ghcr.io", "keys": ["k"]},
		{"prefix": "docker.io/library/", "keys": ["k"]}
	]}`), "p.json")
	if err != nil {
		t.Fatal(err)
	}
	all, err := ParsePolicy([]byte(`{"require": [{"prefix": "*", "keys": ["k"]}, {"prefix": "ghcr.io/acme", "keys": ["k"]}]}`), "all.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		policy *Policy
		ref    string // "" for a local source
		want   string // the rule's prefix, "" for none
	}{
		{p, "127.0.0.1:5000/stagehand/os:v2", "127.0.0.1:5000/stagehand/"},
		{p, "127.0.0.1:5000/stagehand/os@sha256:" + hex64, "127.0.0.1:5000/stagehand/"},
		{p, "127.0.0.1:5000/stagehand/deep/os:v2", "127.0.0.1:5000/stagehand/"},
		{p, "127.0.0.1:5000/stagehand/os-debug:v2", "127.0.0.1:5000/stagehand/os-debug"},
		{p, "127.0.0.1:5000/stagehand-evil/os:v2", ""},
		{p, "127.0.0.1:5000/other:v2", ""},
		{p, "127.0.0.1:5001/stagehand/os:v2", ""},
		{p, "ghcr.io/anyone/os:v1", "ghcr.io"},
		{p, "ubuntu:24.04", "docker.io/library/"},
		{p, "index.docker.io/library/debian:12", "docker.io/library/"},
		{p, "docker.io/acme/os:1", ""},
		{p, "", ""},
		{nil, "ghcr.io/anyone/os:v1", ""},
		{all, "", "*"},
		{all, "quay.io/x/y:1", "*"},
		{all, "ghcr.io/acme/os:1", "ghcr.io/acme"},
	} {
		var ref name.Reference
		if tc.ref != "" {
			var err error
			if ref, err = name.ParseReference(tc.ref); err != nil {
				t.Fatal(err)
			}
		}
		got := ""
		if r := tc.policy.Rule(ref); r != nil {
			got = r.Prefix
		}
		if got != tc.want {
			t.Errorf("Rule(%q) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := newKey(t), newKey(t)
	for n, k := range map[string]any{"keys/release.pub": &k1.PublicKey, "/abs.pub": &k2.PublicKey} {
		b, _ := MarshalPublicKey(k)
		os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755)
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	path := filepath.Join(dir, "policy.json")
	os.WriteFile(path, []byte(`{"require": [{"prefix": "127.0.0.1:5000/stagehand/", "keys": ["keys/release.pub", "`+filepath.Join(dir, "abs.pub")+`"]}]}`), 0o644)
	p, err := LoadPolicy(path, false)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference("127.0.0.1:5000/stagehand/os:v2")
	keys := p.Rule(ref).PublicKeys()
	if len(keys) != 2 || Fingerprint(keys[0]) != Fingerprint(&k1.PublicKey) || Fingerprint(keys[1]) != Fingerprint(&k2.PublicKey) || p.Path() != path {
		t.Errorf("loaded %+v", p)
	}

	if p, err := LoadPolicy(filepath.Join(dir, "absent.json"), true); p != nil || err != nil {
		t.Errorf("missing default policy: %v, %v; want none", p, err)
	}
	if _, err := LoadPolicy(filepath.Join(dir, "absent.json"), false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing named policy: %v", err)
	}
	os.WriteFile(path, []byte(`{"require": [{"prefix": "ghcr.io", "keys": ["keys/missing.pub"]}]}`), 0o644)
	if _, err := LoadPolicy(path, true); err == nil || !strings.Contains(err.Error(), "missing.pub") {
		t.Errorf("policy naming a missing key: %v", err)
	}
	os.WriteFile(path, []byte(`{"require": [{"prefix": "ghcr.io", "keys": ["policy.json"]}]}`), 0o644)
	if _, err := LoadPolicy(path, true); err == nil || !errors.Is(err, ErrKey) {
		t.Errorf("policy naming a file that is no key: %v", err)
	}
}

// FuzzParsePolicy: whatever parses yields rules that match without
// panicking.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"require": [{"prefix": "127.0.0.1:5000/stagehand/", "keys": ["/etc/stagehand/keys/release.pub"]}]}`))
	f.Add([]byte(`{"require": [{"prefix": "*", "keys": ["a.pub"]}, {"prefix": "docker.io", "keys": ["b.pub"]}]}`))
	ref, _ := name.ParseReference("127.0.0.1:5000/stagehand/os:v2")
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b, "fuzz.json")
		if err != nil {
			return
		}
		p.Rule(ref)
		p.Rule(nil)
	})
}
