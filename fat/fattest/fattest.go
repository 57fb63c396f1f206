// Package fattest checks FAT volumes in image files with the reference
// tools, dosfstools' fsck.fat and mtools, for the tests of package fat and
// of the bootloader backends that write through it.
package fattest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Fsck runs fsck.fat -n on a file holding only a FAT file system and
// returns its report; it fails t when fsck.fat finds damage.
func Fsck(t testing.TB, img string) string {
	t.Helper()
	out, err := exec.Command("fsck.fat", "-n", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.fat -n %s: %v:\n%s(fsck.fat comes with 'make deps')", img, err, out)
	}
	return string(out)
}

// Mtools runs an mtools command (mdir, mtype) on the FAT at img@@offset.
func Mtools(t testing.TB, tool, img string, offset int64, args ...string) string {
	t.Helper()
	target := img
	if offset != 0 {
		target = fmt.Sprintf("%s@@%d", img, offset)
	}
	cmd := exec.Command(tool, append([]string{"-i", target}, args...)...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -i %s %s: %v:\n%s", tool, target, strings.Join(args, " "), err, out)
	}
	return string(out)
}
