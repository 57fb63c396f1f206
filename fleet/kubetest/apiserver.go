package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Bearer tokens every test API server knows.
const (
	// AdminToken is the administrator's (group system:masters).
	AdminToken = "stagehand-test-admin"
	// AgentToken is the agent's service account's, stagehand in
	// namespace system-upgrade: what contrib/kubernetes/rbac.yaml binds.
	AgentToken = "stagehand-test-agent"
	// NoRolesToken is a user's that no role is bound to.
	NoRolesToken = "stagehand-test-nobody"
)

// APIServer is a real kube-apiserver on 127.0.0.1 with its own etcd: no
// controller manager, scheduler or kubelet, so the test plays those.
type APIServer struct {
	t    testing.TB
	URL  string
	Etcd *Etcd
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// User is an identity the API server knows by a bearer token.
type User struct {
	Name   string
	Groups []string
}

// StartAPIServer starts etcd and kube-apiserver with RBAC on, and a static
// token for the administrator and for each of users (token: the user's
// name); it waits until /readyz answers and the test's cleanup stops both.
func StartAPIServer(t testing.TB, users ...User) *APIServer {
	t.Helper()
	bin := Tool(t, "kube-apiserver")
	e := StartEtcd(t, 1)
	s := &APIServer{t: t, Etcd: e, dir: t.TempDir()}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saKey := filepath.Join(s.dir, "sa.key")
	writePEM(t, saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	saPub := filepath.Join(s.dir, "sa.pub")
	writePEM(t, saPub, "PUBLIC KEY", pub)
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", AdminToken) +
		fmt.Sprintf("%s,system:serviceaccount:system-upgrade:stagehand,sa-stagehand,\"system:serviceaccounts,system:serviceaccounts:system-upgrade,system:authenticated\"\n", AgentToken) +
		fmt.Sprintf("%s,nobody,nobody,\"system:authenticated\"\n", NoRolesToken)
	for _, u := range users {
		tokens += fmt.Sprintf("%s,%s,%s,\"%s\"\n", u.Name, u.Name, u.Name, strings.Join(u.Groups, ","))
	}
	tokenFile := filepath.Join(s.dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	s.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	args := []string{
		"--etcd-servers=" + strings.Join(e.Endpoints(), ","),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(s.dir, "certs"),
		"--service-cluster-ip-range=10.96.0.0/24", "--endpoint-reconciler-type=none",
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saKey,
		"--token-auth-file=" + tokenFile, "--authorization-mode=RBAC",
		// No controller manager makes service accounts' tokens or the
		// default account: pods are admitted without one.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true", // SUC's Jobs and the kured variant run privileged
		"--v=0",
	}
	log, err := os.Create(filepath.Join(s.dir, "kube-apiserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting kube-apiserver: %v", err)
	}
	log.Close()
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.stop)
	s.waitReady()
	return s
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (s *APIServer) stop() {
	s.cmd.Process.Kill()
	<-s.done
}

// waitReady waits (at most two minutes: the first start creates the
// bootstrap RBAC roles) until /readyz says ok.
func (s *APIServer) waitReady() {
	s.t.Helper()
	cs := s.Client(AdminToken)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "kube-apiserver.log"))
			s.t.Fatalf("kube-apiserver exited: %s", tail(log, 4000))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "kube-apiserver.log"))
			s.t.Fatalf("kube-apiserver not ready within 2 minutes: %v %s\n%s", err, body, tail(log, 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Config is a client configuration for the bearer token (AdminToken, or a
// user's name).
func (s *APIServer) Config(token string) *rest.Config {
	return &rest.Config{
		Host: s.URL, BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             1000, Burst: 1000,
	}
}

// Client is a clientset for the bearer token.
func (s *APIServer) Client(token string) *kubernetes.Clientset {
	s.t.Helper()
	cs, err := kubernetes.NewForConfig(s.Config(token))
	if err != nil {
		s.t.Fatal(err)
	}
	return cs
}

// Kubeconfig writes a kubeconfig for the bearer token and returns its path.
func (s *APIServer) Kubeconfig(token string) string {
	s.t.Helper()
	p := filepath.Join(s.t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: u}
current-context: test
`, s.URL, token)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}
