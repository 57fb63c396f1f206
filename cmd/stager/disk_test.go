package main

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stagehand-dev/stagehand/disk"
)

// testKernel writes a file with a bzImage setup header.
func testKernel(t *testing.T, dir string) string {
	t.Helper()
	b := make([]byte, 64<<10)
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x200)
	copy(b[0x400:], "6.1.0-test (t@t) #1\x00")
	p := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDiskInit(t *testing.T) {
	dir := t.TempDir()
	kernel := testKernel(t, dir)
	initrd := filepath.Join(dir, "initramfs")
	os.WriteFile(initrd, []byte("070701"), 0o644)
	img := filepath.Join(dir, "disk.img")
	base := []string{"disk", "init", "--kernel", kernel, "--initramfs", initrd}
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"no disk", base, 2, "--disk is required"},
		{"no kernel", []string{"disk", "init", "--disk", img, "--initramfs", initrd, "--size", "1G"}, 2, "give one of --install REF, --uki FILE, or both --kernel and --initramfs"},
		{"bad size", append(base, "--disk", img, "--size", "lots"), 2, `--size "lots": not a size`},
		{"bad stage size", append(base, "--disk", img, "--size", "1G", "--stage-size", "-1M"), 2, "not a size"},
		{"argument", append(base, "--disk", img, "extra"), 2, "takes no arguments"},
		{"too small", append(base, "--disk", img, "--size", "512M"), 1, "too small for the layout"},
		{"small ESP", append(base, "--disk", img, "--size", "1G", "--esp-size", "64M"), 1, "below the minimum of 256 MiB"},
		{"missing kernel", []string{"disk", "init", "--disk", img, "--size", "1G", "--kernel", filepath.Join(dir, "nope"), "--initramfs", initrd}, 1, "no such file"},
		{"unknown subcommand", []string{"disk", "format"}, 2, `unknown command "format"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := stager(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.err) || strings.Count(errOut, "\n") != 1 || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and one line saying %q", code, out, errOut, tc.code, tc.err)
			}
			if _, err := os.Stat(img); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s exists after a failed init", img)
			}
		})
	}

	code, out, errOut := stager(t, append(base, "--disk", img, "--size", "1G", "--cmdline", "console=ttyS0", "--version", "v1", "--root-size", "100M")...)
	if code != 0 || !strings.Contains(out, "initialized "+img+" (1 GiB: EFI 300 MiB, META 1 MiB, STAGE 512 MiB, ROOT 100 MiB) with systemd-boot and slot a (version v1, kernel 6.1.0-test)") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = stager(t, "meta", "list", "--disk", img)
	if code != 0 || !strings.Contains(out, `"active":"a"`) {
		t.Errorf("meta list after init: exit %d:\n%s", code, out)
	}
	// Again: the image holds data now.
	code, _, errOut = stager(t, append(base, "--disk", img)...)
	if code != 1 || !strings.Contains(errOut, "pass --force") {
		t.Errorf("second init: exit %d, %q", code, errOut)
	}
	code, _, errOut = stager(t, append(base, "--disk", img, "--force", "--stage-size", "600M")...)
	if code != 0 {
		t.Fatalf("init --force: exit %d, %q", code, errOut)
	}
	d, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if r, err := d.Find(disk.LabelSTAGE); err != nil || r.Size != 600<<20 {
		t.Errorf("STAGE after --force: %v %v", r, err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1048576", 1 << 20, true}, {"256M", 256 << 20, true}, {"2G", 2 << 30, true}, {"2GiB", 2 << 30, true},
		{"1536m", 1536 << 20, true}, {"4K", 4096, true}, {"1T", 1 << 40, true}, {"0", 0, true},
		{"", 0, false}, {"M", 0, false}, {"-1", 0, false}, {"1.5G", 0, false}, {"1X", 0, false}, {"99999999999T", 0, false},
	} {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}
