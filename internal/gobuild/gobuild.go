// Package gobuild builds the project's commands the way `make build` ships
// them: static (CGO_ENABLED=0), -trimpath, stripped (-ldflags=-s -w), for
// Linux. Tests and the bench measure and boot these binaries, so they must
// be the ones a machine runs, built one way.
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Static builds pkgs (as go build takes them, relative to dir) for
// linux/goarch into out: a file for one package, a directory (ending in
// "/") for several. It uses the Go toolchain that runs the caller.
func Static(dir, goarch, out string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out}, pkgs...)
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s for linux/%s: %v: %s", strings.Join(pkgs, " "), goarch, err, b)
	}
	return nil
}
