package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/apply/applytest"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/efivar"
)

// TestBootDisk: without --disk the agent finds the disk the host booted
// from through the efivarfs and /dev the pod mounts at their usual places,
// else through those under --host-root; with neither it says to pass
// --disk. Directories stand for both file systems.
func TestBootDisk(t *testing.T) {
	m := applytest.NewDisk(t, "v1")
	// layout makes root look like a system that booted from m.
	layout := func(t *testing.T, root string) {
		for _, d := range []string{"dev", "sys/block/vda"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(m.Img, filepath.Join(root, "dev/vda")); err != nil {
			t.Fatal(err)
		}
		setBootPart(t, filepath.Join(root, disk.EFIVarsDir), m.Img)
	}
	savedRoot, savedVars := podRoot, efiVars
	t.Cleanup(func() { podRoot, efiVars = savedRoot, savedVars })
	efiVars = func(dir string) (efivar.Store, error) {
		if _, err := os.Stat(dir); err != nil {
			return nil, errors.New("no efivarfs at " + dir)
		}
		return efivar.Dir(dir), nil
	}
	for _, tc := range []struct {
		name      string
		pod, host bool
		want      string // pod or host: where the disk is found; "": not found
	}{
		{"pod mounts", true, false, "pod"},
		{"pod mounts and host root", true, true, "pod"},
		{"host root only", false, true, "host"},
		{"neither", false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod, host := t.TempDir(), t.TempDir()
			if tc.pod {
				layout(t, pod)
			}
			if tc.host {
				layout(t, host)
			}
			podRoot = pod
			got, err := bootDisk(host)
			switch tc.want {
			case "pod":
				if err != nil || got != filepath.Join(pod, "dev/vda") {
					t.Fatalf("%q, %v", got, err)
				}
			case "host":
				if err != nil || got != filepath.Join(host, "dev/vda") {
					t.Fatalf("%q, %v", got, err)
				}
			default:
				if !errors.Is(err, disk.ErrBootDiskUnknown) || !strings.Contains(err.Error(), "--host-root "+host) || !strings.Contains(err.Error(), "pass --disk") {
					t.Fatalf("%q, %v", got, err)
				}
			}
		})
	}
}
