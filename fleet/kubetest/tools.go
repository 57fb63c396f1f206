package kubetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Root is the repository's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Tool returns the path of a tool tools/build.sh built (kube-apiserver,
// etcd), and fails the test with the command to run when it is missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(Root(), "tools", "build.sh"), "-p", name).Output()
	if err != nil {
		t.Fatalf("tools/build.sh -p %s: %v", name, err)
	}
	p := strings.TrimSpace(string(out))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not built (%s missing): run `make tools` (or tools/build.sh %s) first", name, p, name)
	}
	return p
}
