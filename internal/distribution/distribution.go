// Package distribution runs Debian's docker-registry (the CNCF
// distribution registry, 2.8) on 127.0.0.1, with its filesystem storage in
// a directory: the real registry the demo stages from, and the one the
// tests check delta staging's Range requests against (it serves blobs with
// http.ServeContent).
package distribution

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Registry is a running docker-registry.
type Registry struct {
	Addr   string // host:port on 127.0.0.1
	Config string // its configuration file
	Log    string // its log file
	cmd    *exec.Cmd
}

// Start runs docker-registry with its storage, configuration and log in
// dir (made if need be), and waits until it listens.
func Start(dir string) (*Registry, error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return nil, fmt.Errorf("docker-registry is not installed: run 'make deps' as root, or apt-get install docker-registry")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	r := &Registry{Addr: addr, Config: filepath.Join(dir, "registry.yml"), Log: filepath.Join(dir, "registry.log")}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "registry"), addr)
	if err := os.WriteFile(r.Config, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(r.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", r.Config)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting docker-registry: %w", err)
	}
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return r, nil
		}
	}
	r.Stop()
	return nil, fmt.Errorf("docker-registry did not listen on %s (see %s)", addr, r.Log)
}

// Pid is the registry's process id.
func (r *Registry) Pid() int { return r.cmd.Process.Pid }

// Stop ends the registry and waits for it.
func (r *Registry) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	}
}

// Proxy serves a registry through a counting, optionally slower link: it
// counts the bytes of every response body it passes on (what the
// registry sent, as its access log would say) and, when Rate is set (bytes
// a second), sends them no faster.
type Proxy struct {
	h    http.Handler
	Rate float64
	mu   sync.Mutex
	n    int64
}

// NewProxy returns a Proxy in front of the registry at addr.
func NewProxy(addr string) *Proxy {
	return &Proxy{h: httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: addr})}
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.h.ServeHTTP(&countingWriter{ResponseWriter: w, p: p, start: time.Now()}, r)
}

// Bytes is how many bytes of response bodies the proxy has sent.
func (p *Proxy) Bytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

type countingWriter struct {
	http.ResponseWriter
	p     *Proxy
	start time.Time
	n     int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	total := 0
	for len(b) > 0 {
		k := min(len(b), 64<<10)
		n, err := c.ResponseWriter.Write(b[:k])
		c.n += int64(n)
		total += n
		c.p.mu.Lock()
		c.p.n += int64(n)
		c.p.mu.Unlock()
		if err != nil {
			return total, err
		}
		if c.p.Rate > 0 {
			if d := time.Duration(float64(c.n)/c.p.Rate*1e9) - time.Since(c.start); d > 0 {
				time.Sleep(d)
			}
		}
		b = b[k:]
	}
	return total, nil
}
