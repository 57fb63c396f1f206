package etcdguard

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults for Options.
const (
	DefaultReadTimeout = 15 * time.Second // Talos's bound on each member's read
	DefaultDialTimeout = 5 * time.Second
	DefaultLockTTL     = time.Hour
)

// ErrRefused marks a cluster whose state does not allow this member to go
// down now; the message says why.
var ErrRefused = errors.New("etcd guard refused")

// Options says which cluster to check and which member would go down.
type Options struct {
	Endpoints []string // client URLs of the cluster
	// CAFile, CertFile and KeyFile are the client TLS files (all empty:
	// plain HTTP, as on 127.0.0.1 in tests).
	CAFile, CertFile, KeyFile string
	Member                    string        // name of the member on this node
	ReadTimeout               time.Duration // per-member linearizable read (default DefaultReadTimeout)
	DialTimeout               time.Duration // default DefaultDialTimeout
	Logf                      func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// MemberHealth is what the guard found of one member.
type MemberHealth struct {
	Name    string   `json:"name"`
	ID      string   `json:"id"`
	URLs    []string `json:"client_urls"`
	Learner bool     `json:"learner,omitempty"`
	Healthy bool     `json:"healthy"`
	Error   string   `json:"error,omitempty"`
}

// Report is the guard's view of the cluster.
type Report struct {
	Members []MemberHealth `json:"members"`
	Voters  int            `json:"voters"`
	Quorum  int            `json:"quorum"`
	// HealthyAfter is the healthy voters left while this member is down.
	HealthyAfter int `json:"healthy_after"`
}

// Check reads the member list (linearizable) and reads through each member
// (linearizable, bounded), and refuses (ErrRefused) when upgrading
// o.Member would risk quorum: a cluster of two members, a member that has
// not started, a learner, an unhealthy member, or fewer healthy voters
// left than a quorum.
func Check(ctx context.Context, o Options) (*Report, error) {
	o.defaults()
	cli, err := o.client(o.Endpoints)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return check(ctx, cli, o)
}

func check(ctx context.Context, cli *clientv3.Client, o Options) (*Report, error) {
	lctx, cancel := context.WithTimeout(ctx, o.ReadTimeout)
	ml, err := cli.MemberList(lctx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("etcd at %s: no answer within %s (check --etcd-endpoints and the certificates)", strings.Join(o.Endpoints, ","), o.ReadTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: listing members: %w", strings.Join(o.Endpoints, ","), err)
	}
	r := &Report{}
	self := false
	for _, m := range ml.Members {
		h := MemberHealth{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), URLs: m.ClientURLs, Learner: m.IsLearner}
		switch {
		case m.Name == "" || len(m.ClientURLs) == 0:
			h.Error = "not started"
		default:
			if err := o.read(ctx, m.ClientURLs); err != nil {
				h.Error = err.Error()
			} else {
				h.Healthy = true
			}
		}
		if !m.IsLearner {
			r.Voters++
			if h.Healthy && m.Name != o.Member {
				r.HealthyAfter++
			}
		}
		self = self || m.Name == o.Member
		r.Members = append(r.Members, h)
	}
	sort.Slice(r.Members, func(i, j int) bool { return r.Members[i].Name < r.Members[j].Name })
	r.Quorum = r.Voters/2 + 1
	return r, r.verdict(o.Member, self)
}

// verdict applies the rules, the first that fails named.
func (r *Report) verdict(member string, self bool) error {
	if !self {
		return fmt.Errorf("%w: no etcd member is named %q (pass --etcd-member with this node's member name)", ErrRefused, member)
	}
	if r.Voters == 2 {
		return fmt.Errorf("%w: a 2-member cluster loses quorum when either member goes down; add a third member first", ErrRefused)
	}
	for _, m := range r.Members {
		switch {
		case m.Error == "not started":
			return fmt.Errorf("%w: member %s (%s) has not started", ErrRefused, m.ID, cmp.Or(m.Name, "(unnamed)"))
		case m.Learner:
			return fmt.Errorf("%w: member %s is a learner; promote it or remove it first", ErrRefused, cmp.Or(m.Name, "(unnamed)"))
		case !m.Healthy:
			return fmt.Errorf("%w: member %s is unhealthy: %s", ErrRefused, m.Name, m.Error)
		}
	}
	if r.HealthyAfter < r.Quorum {
		return fmt.Errorf("%w: with %s down, %d healthy of %d voting members are left, fewer than a quorum of %d", ErrRefused, member, r.HealthyAfter, r.Voters, r.Quorum)
	}
	return nil
}

// read is a linearizable read through one member only, bounded.
func (o *Options) read(ctx context.Context, urls []string) error {
	cli, err := o.client(urls)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, o.ReadTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, "stagehand.dev/health", clientv3.WithCountOnly()); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no linearizable read through %s within %s", strings.Join(urls, ","), o.ReadTimeout)
		}
		return fmt.Errorf("linearizable read through %s: %w", strings.Join(urls, ","), err)
	}
	return nil
}

func (o *Options) client(endpoints []string) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: o.DialTimeout, Logger: zap.NewNop()}
	if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
		t, err := o.tls()
		if err != nil {
			return nil, err
		}
		cfg.TLS = t
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

func (o *Options) tls() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate", o.CAFile)
		}
	}
	if o.CertFile != "" || o.KeyFile != "" {
		kp, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c, nil
}
