package installer

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/boot/boottest"
)

// TestBuildUKI builds a UKI from a kernel, an initramfs and a command line,
// unsigned and signed with sbsign, reads it back as prestage does, checks
// the signature with sbverify, and packs it in an installer image.
func TestBuildUKI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	snakeoilKey, snakeoilCert := boottest.Snakeoil(t, dir)
	k := boottest.FakeKernel(t, dir, "6.1.0-99-test", 300000)
	i := filepath.Join(dir, "initrd")
	os.WriteFile(i, []byte(strings.Repeat("initramfs ", 5000)), 0o644)
	for _, signed := range []bool{false, true} {
		o := UKIOptions{Kernel: k, Initramfs: i, Cmdline: "console=ttyS0 rdinit=/prestage", Version: "v7"}
		if signed {
			o.SignKey, o.SignCert = snakeoilKey, snakeoilCert
		}
		out := filepath.Join(dir, "uki.efi")
		if err := BuildUKI(ctx, out, o); err != nil {
			t.Fatalf("signed %v: %v", signed, err)
		}
		f, _ := os.Open(out)
		st, _ := f.Stat()
		u, err := boot.CheckUKI(f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := io.ReadAll(u.Kernel())
		want, _ := os.ReadFile(k)
		if string(kb) != string(want) || u.Cmdline != o.Cmdline || u.Version() != "v7" || u.Uname != "6.1.0-99-test" {
			t.Errorf("signed %v: kernel %d bytes, cmdline %q, version %q, uname %q", signed, len(kb), u.Cmdline, u.Version(), u.Uname)
		}
		f.Close()
		verify, err := exec.Command("sbverify", "--cert", snakeoilCert, out).CombinedOutput()
		if signed != (err == nil) {
			t.Errorf("signed %v: sbverify: %v: %s", signed, err, verify)
		}
		if !signed {
			continue
		}
		img, err := Build(BuildOptions{UKI: out, Version: "v7", Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		rc, _ := layers[0].Uncompressed()
		var names []string
		for tr := tar.NewReader(rc); ; {
			h, err := tr.Next()
			if err != nil {
				break
			}
			names = append(names, h.Name)
		}
		rc.Close()
		img.Close()
		if got := strings.Join(names, " "); !strings.Contains(got, "usr/install/amd64/vmlinuz.efi") || strings.Contains(got, "usr/install/amd64/vmlinuz ") {
			t.Errorf("layer holds %s", got)
		}
	}
	for _, tc := range []struct {
		o   UKIOptions
		msg string
	}{
		{UKIOptions{Kernel: k, Initramfs: i, SignKey: snakeoilKey}, "both a signing key"},
		{UKIOptions{Kernel: i, Initramfs: i}, "not a Linux kernel"},
		{UKIOptions{Kernel: k, Initramfs: i, Cmdline: "stagehand.slot=a"}, "serves either slot"},
		{UKIOptions{Kernel: k, Initramfs: i, Stub: i}, "not a PE/COFF"},
		{UKIOptions{Kernel: k, Initramfs: i, SignKey: i, SignCert: i}, "sbsign"},
	} {
		out := filepath.Join(t.TempDir(), "uki.efi")
		err := BuildUKI(ctx, out, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("BuildUKI(%+v) = %v, want %q", tc.o, err, tc.msg)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("BuildUKI(%+v) failed and left %s", tc.o, out)
		}
	}
	if _, err := Build(BuildOptions{UKI: k, Kernel: k, Arch: "amd64"}); err == nil || !strings.Contains(err.Error(), "either the UKI") {
		t.Errorf("Build with a UKI and a kernel: %v", err)
	}
}
