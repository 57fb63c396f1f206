package sign

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// DefaultPolicy is the policy file read when none is named; a missing
// default file means no policy.
const DefaultPolicy = "/etc/stagehand/policy.json"

// Policy says which images must carry a signature, and by which keys:
//
//	{"require": [
//	  {"prefix": "127.0.0.1:5000/stagehand/", "keys": ["/etc/stagehand/keys/release.pub"]},
//	  {"prefix": "ghcr.io", "keys": ["ghcr.pub", "ghcr-next.pub"]}
//	]}
//
// A prefix is a registry ("ghcr.io", "127.0.0.1:5000"), a repository or a
// repository path prefix ("ghcr.io/acme/", "ghcr.io/acme/os"), matched on
// whole path components after normalization (docker.io is index.docker.io,
// a trailing slash is dropped: "ghcr.io/acme" matches ghcr.io/acme/os, not
// ghcr.io/acme-evil/os), or "*" for every image, including those from
// oci: and docker-archive: sources, which carry no signature and are
// therefore refused. The most specific matching rule applies; an image
// must be signed by one of its keys. Relative key paths are relative to the
// policy file. Unknown fields are errors, so that a typo cannot turn the
// policy off.
type Policy struct {
	Require []Rule `json:"require"`
	path    string
}

// Rule is one requirement of a Policy.
type Rule struct {
	Prefix string   `json:"prefix"`
	Keys   []string `json:"keys"` // PEM public key files (cosign.pub)

	registry, repo string // normalized prefix; both empty for "*"
	keys           []crypto.PublicKey
}

// PublicKeys are the rule's keys, loaded.
func (r *Rule) PublicKeys() []crypto.PublicKey { return r.keys }

// String names the rule for messages.
func (r *Rule) String() string { return fmt.Sprintf("rule %q", r.Prefix) }

// ErrPolicy marks a policy file that cannot be used.
var ErrPolicy = errors.New("bad policy")

// LoadPolicy reads the policy file at path and the keys it names. A missing
// DefaultPolicy, and only that, is no policy: (nil, nil).
func LoadPolicy(path string, isDefault bool) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if isDefault && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	p, err := ParsePolicy(b, path)
	if err != nil {
		return nil, err
	}
	for i := range p.Require {
		r := &p.Require[i]
		for _, k := range r.Keys {
			if !filepath.IsAbs(k) {
				k = filepath.Join(filepath.Dir(path), k)
			}
			kb, err := os.ReadFile(k)
			if err != nil {
				return nil, fmt.Errorf("%w %s: %s: %w", ErrPolicy, path, r, err)
			}
			pub, err := LoadPublicKey(kb)
			if err != nil {
				return nil, fmt.Errorf("%w %s: %s: %s: %w", ErrPolicy, path, r, k, err)
			}
			r.keys = append(r.keys, pub)
		}
	}
	return p, nil
}

// ParsePolicy decodes a policy (without loading its keys); name is for
// messages.
func ParsePolicy(b []byte, name string) (*Policy, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p Policy
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrPolicy, name, err)
	}
	if d.More() {
		return nil, fmt.Errorf("%w %s: data after the JSON object", ErrPolicy, name)
	}
	p.path = name
	seen := map[string]bool{}
	for i := range p.Require {
		r := &p.Require[i]
		if err := r.normalize(); err != nil {
			return nil, fmt.Errorf("%w %s: require[%d]: %v", ErrPolicy, name, i, err)
		}
		if len(r.Keys) == 0 {
			return nil, fmt.Errorf("%w %s: %s names no keys", ErrPolicy, name, r)
		}
		if n := r.registry + "/" + r.repo; seen[n] {
			return nil, fmt.Errorf("%w %s: two rules for %q", ErrPolicy, name, r.Prefix)
		} else {
			seen[n] = true
		}
	}
	return &p, nil
}

func (r *Rule) normalize() error {
	p := strings.TrimSuffix(strings.TrimSpace(r.Prefix), "/")
	switch {
	case p == "*":
		return nil
	case p == "":
		return fmt.Errorf("empty prefix (use \"*\" for every image)")
	case !strings.Contains(p, "/"):
		reg, err := name.NewRegistry(p, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("prefix %q: %v", r.Prefix, err)
		}
		r.registry = reg.Name()
	default:
		// Not through name.NewRepository: it would make "docker.io/acme"
		// the repository library/acme, and a prefix names a subtree.
		reg, path, _ := strings.Cut(p, "/")
		rg, err := name.NewRegistry(reg, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("prefix %q: %v", r.Prefix, err)
		}
		if _, err := name.NewRepository(p+"/x", name.StrictValidation); err != nil {
			return fmt.Errorf("prefix %q: %v", r.Prefix, err)
		}
		r.registry, r.repo = rg.RegistryStr(), path
	}
	return nil
}

// Path is the file the policy was read from.
func (p *Policy) Path() string { return p.path }

// Rule returns the rule that applies to ref, or nil. A nil ref is an image
// from a local source (oci:, docker-archive:), which only "*" matches.
func (p *Policy) Rule(ref name.Reference) *Rule {
	if p == nil {
		return nil
	}
	var best *Rule
	score := -1
	for i := range p.Require {
		r := &p.Require[i]
		s := -1
		switch {
		case r.registry == "":
			s = 0
		case ref == nil || ref.Context().RegistryStr() != r.registry:
		case r.repo == "":
			s = 1
		case ref.Context().RepositoryStr() == r.repo || strings.HasPrefix(ref.Context().RepositoryStr(), r.repo+"/"):
			s = 2 + len(r.repo)
		}
		if s > score {
			best, score = r, s
		}
	}
	return best
}
