package initramfs

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzModinfo: whatever ParseModinfo accepts re-encodes to a section that
// parses to the same thing.
func FuzzModinfo(f *testing.F) {
	f.Add([]byte("depends=virtio,virtio_ring\x00name=virtio_blk\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mi, err := ParseModinfo(b)
		if err != nil {
			return
		}
		for _, d := range mi.Depends {
			if checkModName(d) != nil || bytes.ContainsAny([]byte(d), "-,\x00") {
				t.Fatalf("dependency %q is not a module name", d)
			}
		}
		again, err := ParseModinfo(mi.Marshal())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", mi.Marshal(), err)
		}
		if d := cmp.Diff(mi, again); d != "" {
			t.Fatalf("round trip (-first, +second):\n%s", d)
		}
	})
}
