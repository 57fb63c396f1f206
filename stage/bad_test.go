package stage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/meta"
)

// gzipLayer is a gzip-compressed layer holding one big file of zeros: a
// decompression bomb in miniature.
func gzipBombLayer(t testing.TB, size int) v1.Layer {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "usr/share/zeros", Mode: 0o644, Size: int64(size)})
	tw.Write(make([]byte, size))
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb.Bytes())
	zw.Close()
	b := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// blobPath is where an OCI layout keeps a blob.
func blobPath(dir string, h v1.Hash) string { return filepath.Join(dir, "blobs", h.Algorithm, h.Hex) }

// TestStageBadInput runs every refusal and checks that it names the problem
// and that the disk image is byte for byte what it was: META untouched and
// any bytes written to the free half of STAGE zeroed again. Half of the
// cases start from a disk that already has a payload staged, so the failed
// stage writes into the other half.
func TestStageBadInput(t *testing.T) {
	registryAddr := testRegistry(t, "", "")
	authReg := testRegistry(t, "fleet", "s3cret")
	good := newArtifacts(20, 2*mib, 3*mib, "v")
	goodImg := buildImage(t, good, "amd64")
	push(t, registryAddr+"/os:good", goodImg, nil)
	push(t, authReg+"/os:good", goodImg, staticKeychain{"fleet", "s3cret"})
	pushIndex(t, registryAddr+"/os:armonly", map[string]v1Image{"arm64": buildImage(t, good, "arm64"), "riscv64": buildImage(t, good, "riscv64")})
	push(t, registryAddr+"/os:armimage", buildImage(t, good, "arm64"), nil)
	push(t, registryAddr+"/os:other", buildImage(t, newArtifacts(22, mib, mib, "other"), "amd64"), nil)

	dir := t.TempDir()
	add := func(tag string, img v1.Image) string {
		writeLayout(t, dir+"/"+tag, img, tag)
		return "oci:" + dir + "/" + tag + ":" + tag
	}
	big := newArtifacts(21, 9*mib, 9*mib, "")
	hostile := func(e tarEntry) v1.Image { // a good first layer, then the hostile entry
		return imageOf(t, goodLayer(t, good), craftedLayer(t, e))
	}
	// A tampered blob (same size, one byte changed) and a truncated one.
	tamperedRef := add("tampered", goodImg)
	truncatedRef := add("truncated", goodImg)
	layers, _ := goodImg.Layers()
	ld, _ := layers[0].Digest()
	flip(t, blobPath(dir+"/tampered", ld), 3*mib)
	os.Truncate(blobPath(dir+"/truncated", ld), 4*mib)

	// Signatures: good is unsigned; signed-by-other carries a signature by
	// another key; replayed carries other's signature image, whose payload
	// names other's digest.
	release, stranger := newSigningKey(t), newSigningKey(t)
	push(t, registryAddr+"/os:signed-by-stranger", buildImage(t, newArtifacts(24, mib, mib, "stranger's"), "amd64"), nil)
	signImage(t, registryAddr+"/os:signed-by-stranger", stranger)
	otherImg := buildImage(t, newArtifacts(23, mib, mib, "replayed"), "amd64")
	push(t, registryAddr+"/os:replayed", otherImg, nil)
	replaySignature(t, registryAddr+"/os:other", registryAddr+"/os:replayed", release)
	verifyKey := func(o *Options) { o.VerifyKeys = []crypto.PublicKey{&release.PublicKey} }
	policyFor := func(prefix string) func(*Options) {
		return func(o *Options) { o.Policy = writePolicy(t, prefix, &release.PublicKey) }
	}

	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	cases := []struct {
		name, ref string
		opts      func(*Options)
		setup     func(t *testing.T, disk string)
		want      string
	}{
		{name: "malformed reference", ref: "Not A Ref!!", want: "malformed image reference"},
		{name: "empty oci path", ref: "oci:", want: "no path"},
		{name: "registry unreachable", ref: deadAddr + "/os:v", want: "unreachable"},
		{name: "auth refused", ref: authReg + "/os:good", opts: func(o *Options) { o.Keychain = staticKeychain{"fleet", "wrong"} }, want: "refused the credentials"},
		{name: "no credentials", ref: authReg + "/os:good", want: "refused the credentials"},
		{name: "tag not found", ref: registryAddr + "/os:nope", want: "not found in the registry"},
		{name: "repository not found", ref: registryAddr + "/nothing:v", want: "not found in the registry"},
		{name: "digest not found", ref: registryAddr + "/os@sha256:" + strings.Repeat("ab", 32), want: "not found in the registry"},
		{name: "no image for the platform", ref: registryAddr + "/os:armonly", want: "has no image for platform linux/amd64; it has: linux/arm64, linux/riscv64"},
		{name: "single image of another platform", ref: registryAddr + "/os:armimage", want: "it has: linux/arm64"},
		{name: "oci tag missing", ref: add("v1", goodImg) + "x", want: `has no image tagged "v1x"`},
		{name: "kernel missing", ref: add("nokernel", imageOf(t, craftedLayer(t, regEntry("usr/install/amd64/initramfs.xz", good.initramfs), regEntry("usr/install/amd64/README", []byte("x"))))),
			want: "no /usr/install/amd64/vmlinuz (it needs a kernel and an initramfs, or a UKI at /usr/install/amd64/vmlinuz.efi; under /usr/install it has /usr/install/amd64/README, /usr/install/amd64/initramfs.xz)"},
		{name: "kernel whited out", ref: add("whiteout", imageOf(t, goodLayer(t, good), craftedLayer(t, regEntry("usr/install/amd64/.wh.vmlinuz", nil)))), want: "no /usr/install/amd64/vmlinuz"},
		{name: "payload larger than half", ref: add("big", imageOf(t, goodLayer(t, big))), want: "half of STAGE holds 16773120"},
		{name: "tampered blob", ref: tamperedRef, want: "digest is sha256:"},
		{name: "truncated blob", ref: truncatedRef, want: "truncated or corrupt"},
		{name: "dotdot entry", ref: add("dotdot", hostile(regEntry("usr/../../etc/passwd", []byte("x")))), want: "climbs out of the image tree"},
		{name: "absolute entry", ref: add("abs", hostile(regEntry("/etc/passwd", []byte("x")))), want: "is absolute"},
		{name: "symlink leaving", ref: add("symlink", hostile(tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/lib/x", Linkname: "../../../etc"}})), want: "leaves the image tree"},
		{name: "hard link leaving", ref: add("hardlink", hostile(tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/lib/x", Linkname: "../etc/shadow"}})), want: "climbs out"},
		{name: "device node", ref: add("device", hostile(tarEntry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Devmajor: 8}})), want: "is a device node"},
		{name: "kernel is a symlink", ref: add("kernellink", imageOf(t, craftedLayer(t, tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/install/amd64/vmlinuz", Linkname: "/boot/vmlinuz"}}, regEntry("usr/install/amd64/initramfs.xz", good.initramfs)))),
			want: `artifact is a symlink to "/boot/vmlinuz"`},
		{name: "artifact over the cap", ref: add("cap", goodImg), opts: func(o *Options) { o.MaxArtifact = 2*mib + 100 }, want: "artifact initramfs.xz is 3145728 bytes, more than the limit"},
		{name: "decompression bomb", ref: add("bomb", imageOf(t, goodLayer(t, good), gzipBombLayer(t, 40*mib))), opts: func(o *Options) { o.MaxUnpacked = 32 * mib }, want: "decompression bomb"},
		{name: "no signature", ref: registryAddr + "/os:good", opts: verifyKey, want: "no signature: " + registryAddr + "/os has no cosign signature for sha256:"},
		{name: "wrong key", ref: registryAddr + "/os:signed-by-stranger", opts: verifyKey, want: "not signed by the key: none of the 1 signatures of sha256:"},
		{name: "payload for another digest", ref: registryAddr + "/os:replayed", opts: verifyKey, want: "signed payload is for another digest"},
		{name: "policy requires a signature", ref: registryAddr + "/os:good", opts: policyFor(registryAddr + "/os"), want: `" requires a signature): no signature`},
		{name: "policy rule, wrong key", ref: registryAddr + "/os:signed-by-stranger", opts: policyFor(registryAddr), want: "not signed by the key"},
		{name: "verify key on an OCI layout", ref: add("local", goodImg), opts: verifyKey, want: "signatures need a registry reference: an OCI layout carries none, and --verify-key requires one"},
		{name: "policy for every image, OCI layout", ref: add("local2", goodImg), opts: policyFor("*"), want: `signatures need a registry reference: an OCI layout carries none, and policy `},
		{name: "META full", ref: add("full", goodImg), setup: func(t *testing.T, d string) { fillMETA(t, d, meta.Capacity-100) }, want: "META full"},
		{name: "staging during a trial", ref: add("trial", goodImg), setup: func(t *testing.T, d string) { setPhase(t, d, meta.PhaseTrial) }, want: "is on trial"},
		{name: "locked by another stager", ref: add("locked", goodImg), setup: lockFor(2 * time.Second), want: "locked by another stagehand process"},
	}
	disk.LockTimeout = 300 * time.Millisecond
	for _, tc := range cases {
		for _, prestaged := range []bool{false, true} {
			name := tc.name
			if prestaged {
				name += " (over a staged payload)"
			}
			t.Run(name, func(t *testing.T) {
				dsk := testDisk(t, 32*mib)
				if prestaged {
					stageOK(t, Options{Disk: dsk, Image: registryAddr + "/os:other"})
				}
				if tc.setup != nil {
					tc.setup(t, dsk)
				}
				before := hashFile(t, dsk)
				o := Options{Disk: dsk, Image: tc.ref, Now: fixedNow}
				if tc.opts != nil {
					tc.opts(&o)
				}
				_, err := Stage(context.Background(), o)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Stage(%s) = %v, want an error saying %q", tc.ref, err, tc.want)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				if hashFile(t, dsk) != before {
					t.Error("the refused stage changed the disk image")
				}
			})
		}
	}

	t.Run("disk without the layout", func(t *testing.T) {
		noStage := disktest.Image(t, filepath.Join(t.TempDir(), "d.img"), []disktest.Part{{Label: "EFI", Size: 2 * mib}, {Label: "META", Size: mib}})
		before := hashFile(t, noStage)
		_, err := Stage(context.Background(), Options{Disk: noStage, Image: registryAddr + "/os:good"})
		if err == nil || !strings.Contains(err.Error(), "no partition labelled STAGE") || !strings.Contains(err.Error(), "stager disk init") {
			t.Fatalf("Stage = %v", err)
		}
		if hashFile(t, noStage) != before {
			t.Error("disk changed")
		}
	})
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0xff
	f.WriteAt(b, off)
}

func fillMETA(t *testing.T, img string, n int) {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := store.Update(func(b *meta.Block) error { return b.Set(0x30, make([]byte, n-b.Used()-8)) }); err != nil {
		t.Fatal(err)
	}
}

func setPhase(t *testing.T, img string, p meta.Phase) {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = store.Update(func(b *meta.Block) error {
		return b.SetSlots(&meta.Slots{Phase: p, Active: meta.SlotA, Trial: meta.SlotB, TriesLeft: 2})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lockFor holds the disk's lock from another open file for d.
func lockFor(d time.Duration) func(t *testing.T, img string) {
	return func(t *testing.T, img string) {
		dk, err := disk.Open(img, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := dk.Lock(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dk.Close() })
		time.AfterFunc(d, func() { dk.Close() })
	}
}
