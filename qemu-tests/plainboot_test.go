//go:build vm

package qemutests

import (
	"context"
	"regexp"
	"testing"
	"time"
)

// Bounds for each step of a boot under TCG (about 20 s in all here).
const (
	bootTimeout     = 3 * time.Minute
	poweroffTimeout = time.Minute
)

// testosLine matches the line the test OS prints once it runs.
var testosLine = regexp.MustCompile(`stagehand-testos: version=(\S+) uname=(\S+) slot=(\S*)`)

// TestPlainBoot boots a fresh `stager disk init` disk: OVMF, systemd-boot,
// slot A's Debian kernel and the test OS, which says what booted and powers
// off.
func TestPlainBoot(t *testing.T) {
	checkHost(t)
	k := kernel(t, "cloud")
	img := newDisk(t, k, "v1", "console=ttyS0")
	m := newMachine(t, img)
	ctx := context.Background()

	r := start(t, m)
	got, err := r.Expect(ctx, bootTimeout, testosLine)
	if err != nil {
		t.Fatal(err)
	}
	booted := r.Elapsed()
	if got[1] != "v1" || got[2] != k.Release || got[3] != "a" {
		t.Errorf("booted version=%s uname=%s slot=%s, want version=v1 uname=%s slot=a", got[1], got[2], got[3], k.Release)
	}
	if _, err := r.Expect(ctx, poweroffTimeout, regexp.MustCompile(`reboot: Power down`)); err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(poweroffTimeout); err != nil {
		t.Fatalf("QEMU after power off: %v", err)
	}
	t.Logf("plain boot: power on to test OS %s, to power off %s", booted.Round(100*time.Millisecond), r.Elapsed().Round(100*time.Millisecond))
}
