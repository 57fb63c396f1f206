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
	stepTimeout     = 30 * time.Second
)

// testosLine matches the line the test OS prints once it runs.
var testosLine = regexp.MustCompile(`stagehand-testos: version=(\S+) uname=(\S+) slot=(\S*)`)

// TestPlainBoot boots a fresh `stager disk init` disk: OVMF, systemd-boot,
// slot A's Debian kernel and the test OS, which loads the virtio modules,
// finds the disk, says what booted and powers off. The machine boots twice,
// its firmware variables kept, as every scenario's machine does; both
// Debian kernels are tried, since the upgrade scenarios move between them.
func TestPlainBoot(t *testing.T) {
	checkHost(t)
	for _, flavor := range []string{"cloud", "generic"} {
		t.Run(flavor, func(t *testing.T) {
			k := kernel(t, flavor)
			img := newDisk(t, k, "v1", "console=ttyS0 stagehand.testos.steps=disks")
			m := newMachine(t, img)
			ctx := context.Background()
			for boot := 1; boot <= 2; boot++ {
				r := start(t, m)
				got, err := r.Expect(ctx, bootTimeout, testosLine)
				if err != nil {
					t.Fatalf("boot %d: %v", boot, err)
				}
				booted := r.Elapsed()
				if got[1] != "v1" || got[2] != k.Release || got[3] != "a" {
					t.Errorf("boot %d: version=%s uname=%s slot=%s, want version=v1 uname=%s slot=a", boot, got[1], got[2], got[3], k.Release)
				}
				if _, err := r.Expect(ctx, stepTimeout, regexp.MustCompile(`stagehand-testos: disks=vda\b`)); err != nil {
					t.Fatalf("boot %d: %v", boot, err)
				}
				if _, err := r.Expect(ctx, poweroffTimeout, regexp.MustCompile(`reboot: Power down`)); err != nil {
					t.Fatalf("boot %d: %v", boot, err)
				}
				if err := r.Wait(poweroffTimeout); err != nil {
					t.Fatalf("boot %d: QEMU after power off: %v", boot, err)
				}
				t.Logf("boot %d (%s): power on to test OS %s, to power off %s", boot, k.Release,
					booted.Round(100*time.Millisecond), r.Elapsed().Round(100*time.Millisecond))
			}
		})
	}
}
