package main

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitramfsBuild appends the pre-stage part to a compressed base and
// checks that the result is reproducible and that the kernel's way of
// reading it (concatenated archives) finds /prestage and the base's files.
func TestInitramfsBuild(t *testing.T) {
	dir := t.TempDir()
	// A base as distributions ship it: a gzip-compressed newc archive.
	src := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "init"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "os-release"), []byte("ID=test\n"), 0o644)
	find := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet")
	find.Dir = src
	raw, err := find.Output()
	if err != nil {
		t.Fatalf("cpio: %v (cpio comes with make deps)", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	base := filepath.Join(dir, "base.img")
	os.WriteFile(base, gz.Bytes(), 0o644)
	prestage := filepath.Join(dir, "prestage")
	os.WriteFile(prestage, []byte("\x7fELF not really"), 0o755)

	var outs [][]byte
	for _, name := range []string{"one.img", "two.img"} {
		out := filepath.Join(dir, name)
		code, stdout, e := stager(t, "initramfs", "build", "--base", base, "--prestage", prestage, "--output", out)
		if code != 0 || !strings.Contains(stdout, "wrote "+out) {
			t.Fatalf("initramfs build: %d %q %q", code, stdout, e)
		}
		b, _ := os.ReadFile(out)
		outs = append(outs, b)
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Error("the same inputs gave different bytes")
	}
	if !bytes.HasPrefix(outs[0], gz.Bytes()) {
		t.Error("the base is not kept as it was at the start")
	}
	// The appended part lists /prestage with mode 0755.
	list := exec.Command("cpio", "-t", "-v", "--quiet")
	list.Stdin = bytes.NewReader(outs[0][len(gz.Bytes())+(4-len(gz.Bytes())%4)%4:])
	got, err := list.Output()
	if err != nil || !strings.Contains(string(got), "-rwxr-xr-x") || !strings.Contains(string(got), "prestage") {
		t.Errorf("cpio -t of the appended part: %v\n%s", err, got)
	}
	if code, _, e := stager(t, "initramfs", "build", "--modules", "virtio_blk", "--output", filepath.Join(dir, "x")); code != 2 || !strings.Contains(e, "--modules needs --kernel-modules") {
		t.Errorf("modules without a tree: %d %q", code, e)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Error("a refused build left an output")
	}
}
