package disk

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const mountinfoAutofs = `22 1 0:21 / / ro,relatime shared:1 - squashfs /dev/loop0 ro
25 22 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
40 22 0:34 / /efi rw,relatime shared:20 - autofs systemd-1 rw,fd=29,pgrp=1,timeout=120,minproto=5,maxproto=5,direct
41 22 0:35 / /boot rw,relatime shared:21 - autofs systemd-1 rw,fd=30,direct
42 22 0:36 / /mnt/nfs rw,relatime shared:22 - autofs systemd-1 rw,fd=31,direct
`

func TestFindMount(t *testing.T) {
	for _, tc := range []struct {
		name, mi, dev string
		want          string
		autofs        []string
	}{
		{"mounted", mountinfoAutofs + "60 40 254:1 / /efi rw,relatime shared:30 - vfat /dev/vda1 rw,fmask=0077\n", "254:1", "/efi", nil},
		{"automount not yet triggered", mountinfoAutofs, "254:1", "", []string{"/efi", "/boot"}},
		{"a bind mount of a directory does not count", "70 22 254:1 /dir /mnt rw - vfat /dev/vda1 rw\n", "254:1", "", nil},
		{"escaped mount point", "70 22 254:1 / /mnt/my\\040esp rw - vfat /dev/vda1 rw\n", "254:1", "/mnt/my esp", nil},
		{"nothing", "", "254:1", "", nil},
		{"short lines", "1 2 3\n\n-\n", "254:1", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, autofs := findMount([]byte(tc.mi), tc.dev)
			if got != tc.want {
				t.Errorf("mount point %q, want %q", got, tc.want)
			}
			if d := cmp.Diff(tc.autofs, autofs); d != "" {
				t.Errorf("automount points (-want, +got):\n%s", d)
			}
		})
	}
}

func FuzzFindMount(f *testing.F) {
	f.Add([]byte(mountinfoAutofs), "254:1")
	f.Add([]byte("70 22 254:1 / /mnt/a\\040b rw - vfat /dev/vda1 rw\n"), "254:1")
	f.Add([]byte("1 2 3 4 5 - -\n- autofs"), "3")
	f.Fuzz(func(t *testing.T, mi []byte, dev string) {
		mnt, autofs := findMount(mi, dev)
		if mnt != "" && len(autofs) != 0 {
			t.Errorf("found %q and automount points %q", mnt, autofs)
		}
		for _, p := range autofs {
			if !strings.HasPrefix(p, "/") {
				t.Errorf("automount point %q", p)
			}
		}
	})
}
