package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// artifacts writes a small kernel and initramfs for image build.
func artifacts(t *testing.T) (string, string) {
	dir := t.TempDir()
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.xz")
	os.WriteFile(k, []byte(strings.Repeat("K", 100000)), 0o644)
	os.WriteFile(i, []byte(strings.Repeat("I", 300000)), 0o644)
	return k, i
}

func TestImageBuildAndStage(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	k, i := artifacts(t)
	layout := "oci:" + t.TempDir() + ":v2"

	code, out1, e := stager(t, "image", "build", "--kernel", k, "--initramfs", i, "--version", "v2", "--cmdline", "console=ttyS0", "--output", layout)
	if code != 0 || !strings.Contains(out1, "built installer image sha256:") {
		t.Fatalf("image build: %d %q %q", code, out1, e)
	}
	code, out2, e := stager(t, "image", "build", "--kernel", k, "--initramfs", i, "--version", "v2", "--cmdline", "console=ttyS0", "--push", reg+"/os:v2")
	if code != 0 || strings.Fields(out1)[3] != strings.Fields(out2)[3] {
		t.Fatalf("push build: %d %q %q; want the same digest as %q", code, out2, e, out1)
	}

	dsk := newDisk(t)
	code, out, e := stager(t, "--image", reg+"/os:v2", "--disk", dsk)
	if code != 0 || !strings.Contains(out, "staged "+reg+"/os:v2 (sha256:") || !strings.Contains(out, "for slot b: 4 artifacts") {
		t.Fatalf("stage: %d %q %q", code, out, e)
	}
	code, out, _ = stager(t, "--image", layout, "--disk", dsk, "--json")
	var res struct {
		AlreadyStaged bool
		Staged        struct{ Digest string }
	}
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || !res.AlreadyStaged {
		t.Fatalf("the same image from the layout: %d %v %q", code, err, out)
	}

	code, out, _ = stager(t, "status", "--disk", dsk)
	for _, want := range []string{"phase:    staged", "staged:   " + reg + "/os:v2", "idle → staged  slot b", "vmlinuz 97.7 KiB"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = stager(t, "status", "--disk", dsk, "--json")
	var st struct {
		Slots  struct{ Phase string }
		Staged struct{ Digest string }
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Slots.Phase != "staged" || st.Staged.Digest != res.Staged.Digest {
		t.Errorf("status --json: %v %q", err, out)
	}
	if code, out, _ := stager(t, "cancel", "--disk", dsk); code != 0 || !strings.Contains(out, "cancelled the staged upgrade") {
		t.Errorf("cancel: %d %q", code, out)
	}
	if code, out, _ := stager(t, "cancel", "--disk", dsk); code != 0 || !strings.Contains(out, "nothing is staged") {
		t.Errorf("second cancel: %d %q", code, out)
	}
}

func TestStageBadUsage(t *testing.T) {
	dsk := newDisk(t)
	k, _ := artifacts(t)
	layout := t.TempDir() // a refused image build writes nothing here
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--image", "UPPER/Case!", "--disk", dsk}, 2, "malformed image reference"},
		{[]string{"--image", "oci:/nonexistent", "--platform", "a/b/c/d", "--disk", dsk}, 2, "--platform"},
		{[]string{"--image", "oci:" + t.TempDir() + ":v1", "--disk", dsk}, 1, "reading OCI layout"},
		{[]string{"--image", "oci:" + t.TempDir() + ":v1", "--disk", dsk, "--firmware-vars", "/nonexistent"}, 2, "--firmware-vars /nonexistent: not a directory of EFI variables"},
		{[]string{"stats"}, 2, `did you mean "status"?`},
		{[]string{"image", "build", "--kernel", k}, 2, "--kernel and --initramfs are required"},
		{[]string{"image", "build", "--kernel", k, "--initramfs", k}, 2, "exactly one of --output"},
		{[]string{"image", "build", "--kernel", k, "--initramfs", k, "--output", "127.0.0.1:5000/x:v1"}, 2, "--output takes oci:DIR"},
		{[]string{"image", "build", "--kernel", k, "--initramfs", "/nonexistent", "--output", "oci:" + t.TempDir()}, 1, "no such file"},
		{[]string{"image", "build", "--kernel", k, "--initramfs", k, "--pcr-private-key", k, "--output", "oci:" + layout}, 2, "--pcr-private-key and --stub go with --uki"},
	} {
		before := hashFile(t, dsk)
		code, _, errOut := stager(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.msg) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("stager %s: exit %d, stderr %q; want exit %d and one line with %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.msg)
		}
		if hashFile(t, dsk) != before {
			t.Errorf("stager %s changed the disk", strings.Join(tc.args, " "))
		}
	}
	if ents, _ := os.ReadDir(layout); len(ents) != 0 {
		t.Errorf("a refused image build wrote %d files into %s", len(ents), layout)
	}
}

// TestStageRolledBack: an image whose digest rolled back on this machine is
// refused (one line, exit 1, the disk unchanged) until --retry.
func TestStageRolledBack(t *testing.T) {
	k, i := artifacts(t)
	ref := "oci:" + t.TempDir() + ":v3"
	code, out, e := stager(t, "image", "build", "--kernel", k, "--initramfs", i, "--version", "v3", "--output", ref)
	if code != 0 {
		t.Fatalf("image build: %d %q %q", code, out, e)
	}
	digest := strings.Fields(out)[3]
	dsk := newDisk(t)
	slots := `{"phase":"idle","active":"a","a":{"state":"good","version":"v2"},"b":{"state":"bad","version":"v3","digest":"` + digest + `","reason":"slot b did not confirm within 3 boots"}}`
	if code, _, e := stager(t, "meta", "set", "slots", slots, "--disk", dsk); code != 0 {
		t.Fatalf("meta set: %d %q", code, e)
	}
	before := hashFile(t, dsk)
	code, _, e = stager(t, "--image", ref, "--disk", dsk)
	want := "stager: image " + digest + " (v3) rolled back on this machine: slot b did not confirm within 3 boots; stage it again with --retry\n"
	if code != 1 || e != want {
		t.Fatalf("stage: exit %d, stderr %q; want exit 1 and %q", code, e, want)
	}
	if hashFile(t, dsk) != before {
		t.Fatal("the refusal changed the disk")
	}
	code, out, e = stager(t, "--image", ref, "--disk", dsk, "--retry")
	if code != 0 || !strings.Contains(out, "staged "+ref+" ("+digest+") for slot b") || !strings.Contains(e, "staging it again, as asked (retry)") {
		t.Fatalf("stage --retry: %d %q %q", code, out, e)
	}
	if code, out, _ := stager(t, "status", "--disk", dsk); code != 0 || !strings.Contains(out, "(a retry: it rolled back on slot b before)") {
		t.Errorf("status does not show the retry:\n%s", out)
	}
	if _, out, _ := stager(t, "--help"); !strings.Contains(out, "stage an image even if it rolled back on this machine before") {
		t.Errorf("--help does not explain --retry:\n%s", out)
	}
}
