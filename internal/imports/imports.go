// Package imports checks what a command links: tests keep heavy or risky
// packages out of the binaries that must stay small (prestage in PID 1 of
// the initramfs, stager at every boot).
package imports

import (
	"os/exec"
	"strings"
	"testing"
)

// Forbid fails t for each package that the Go package in the current
// directory depends on (go list -deps) and banned names: the package or
// any under it, or, for a name ending in "$", that package alone.
func Forbid(t testing.TB, what string, banned ...string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	for _, b := range banned {
		exact, only := strings.CutSuffix(b, "$")
		for _, dep := range deps {
			if dep == exact || !only && strings.HasPrefix(dep, exact+"/") {
				t.Errorf("%s imports %s", what, dep)
			}
		}
	}
}
