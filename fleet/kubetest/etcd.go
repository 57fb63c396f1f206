package kubetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is an etcd cluster of processes on 127.0.0.1.
type Etcd struct {
	t       testing.TB
	bin     string
	dir     string
	Members []*Member
}

// Member is one etcd process.
type Member struct {
	Name, ClientURL, PeerURL string
	dir                      string
	cluster                  string // --initial-cluster
	state                    string // new or existing
	learner                  bool
	cmd                      *exec.Cmd
	done                     chan struct{}
}

// FreePort returns a TCP port free on 127.0.0.1 now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartEtcd starts a cluster of n members named m0..m(n-1) and waits until
// it serves linearizable reads; the test's cleanup stops it.
func StartEtcd(t testing.TB, n int) *Etcd {
	t.Helper()
	e := &Etcd{t: t, bin: Tool(t, "etcd"), dir: t.TempDir()}
	var peers []string
	for i := 0; i < n; i++ {
		m := &Member{Name: fmt.Sprintf("m%d", i), ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)), state: "new"}
		m.dir = filepath.Join(e.dir, m.Name)
		peers = append(peers, m.Name+"="+m.PeerURL)
		e.Members = append(e.Members, m)
	}
	for _, m := range e.Members {
		m.cluster = strings.Join(peers, ",")
		e.start(m)
	}
	t.Cleanup(func() {
		for _, m := range e.Members {
			e.stop(m)
		}
	})
	e.WaitHealthy()
	return e
}

func (e *Etcd) start(m *Member) {
	e.t.Helper()
	args := []string{
		"--name", m.Name, "--data-dir", m.dir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.cluster, "--initial-cluster-state", m.state,
		"--initial-cluster-token", "stagehand-test", "--log-level", "error",
		"--heartbeat-interval", "50", "--election-timeout", "500",
	}
	log, err := os.OpenFile(m.dir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting etcd %s: %v", m.Name, err)
	}
	log.Close()
	m.cmd, m.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(m.done) }()
}

func (e *Etcd) stop(m *Member) {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// Stop kills member i (its data stays); Start starts it again.
func (e *Etcd) Stop(i int) { e.stop(e.Members[i]) }

// Start starts member i again after Stop.
func (e *Etcd) Start(i int) {
	e.t.Helper()
	m := e.Members[i]
	m.state = "existing"
	e.start(m)
}

// Endpoints are the client URLs of the running members.
func (e *Etcd) Endpoints() []string {
	var eps []string
	for _, m := range e.Members {
		if m.cmd != nil {
			eps = append(eps, m.ClientURL)
		}
	}
	return eps
}

// Client is a client of the running members.
func (e *Etcd) Client() *clientv3.Client {
	e.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cli.Close() })
	return cli
}

// WaitHealthy waits (at most a minute) until every running member serves
// reads.
func (e *Etcd) WaitHealthy() {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, m := range e.Members {
		if m.cmd == nil {
			continue
		}
		for {
			err := readThrough(m.ClientURL, m.learner)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(m.dir + ".log")
				e.t.Fatalf("etcd %s not healthy within a minute: %v\n%s", m.Name, err, log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// readThrough reads through one member: linearizable, or serializable for
// a learner (which serves no other reads).
func readThrough(url string, serializable bool) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err = cli.Get(ctx, "health", opts...)
	return err
}

// AddLearner adds a member as a learner and starts it.
func (e *Etcd) AddLearner() *Member {
	e.t.Helper()
	m := &Member{Name: fmt.Sprintf("m%d", len(e.Members)), ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(e.t)), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(e.t)), state: "existing", learner: true}
	m.dir = filepath.Join(e.dir, m.Name)
	e.retry("adding a learner", func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.MemberAddAsLearner(ctx, []string{m.PeerURL})
		return err
	})
	peers := []string{m.Name + "=" + m.PeerURL}
	for _, o := range e.Members {
		peers = append(peers, o.Name+"="+o.PeerURL)
	}
	m.cluster = strings.Join(peers, ",")
	e.Members = append(e.Members, m)
	e.start(m)
	return m
}

// AddUnstarted adds a member that never starts (it has no name in the
// member list).
func (e *Etcd) AddUnstarted() {
	e.t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d", FreePort(e.t))
	e.retry("adding a member", func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.MemberAdd(ctx, []string{url})
		return err
	})
}

// retry runs a membership change until etcd accepts it (at most 30 s): a
// cluster refuses changes until its members have been connected a while.
func (e *Etcd) retry(what string, f func(context.Context, *clientv3.Client) error) {
	e.t.Helper()
	cli := e.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := f(ctx, cli)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
