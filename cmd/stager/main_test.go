package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/disk/disktest"
)

// TestMain lets the test binary act as stager when STAGER_AS_MAIN=1, so
// that tests can run it as another user.
func TestMain(m *testing.M) {
	if os.Getenv("STAGER_AS_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestBlockDeviceWithoutPermission runs stager as nobody against a loop
// device: one line that says what to do, exit 1, nothing changed.
func TestBlockDeviceWithoutPermission(t *testing.T) {
	img := newDisk(t)
	dev := disktest.Loop(t, img)
	before := hashFile(t, img)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--image", "oci:/nonexistent:v1", "--disk", dev},
		{"meta", "set", "7", "x", "--disk", dev},
		{"status", "--disk", dev},
	} {
		cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", self}, args...)...)
		cmd.Env = append(os.Environ(), "STAGER_AS_MAIN=1")
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "permission denied (run as root") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("stager %s as nobody: %v, %q", strings.Join(args, " "), err, out)
		}
	}
	if hashFile(t, img) != before {
		t.Error("the disk changed")
	}
}
