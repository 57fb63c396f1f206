// Package boottest makes inputs for tests of the boot flow: kernels that
// look like bzImages to KernelRelease, without being bootable.
package boottest

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// FakeKernel writes a file with a bzImage setup header naming release,
// padded to size bytes, and returns its path.
func FakeKernel(t testing.TB, dir, release string, size int) string {
	t.Helper()
	b := make([]byte, size)
	for i := 0x1000; i < size; i++ {
		b[i] = byte(i*7 + len(release))
	}
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x200)
	copy(b[0x400:], release+" (test@stagehand) #1 SMP\x00")
	p := filepath.Join(dir, "vmlinuz-"+release)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
