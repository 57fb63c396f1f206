package stage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

var fixedNow = func() time.Time { return time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC) }

func stageOK(t *testing.T, o Options) *Result {
	t.Helper()
	if o.Now == nil {
		o.Now = fixedNow
	}
	res, err := Stage(context.Background(), o)
	if err != nil {
		t.Fatalf("Stage(%s): %v", o.Image, err)
	}
	return res
}

// checkStaged reads the disk back: META's record, the Talos tag, the
// payload's bytes and the half's header, against the test's own inputs.
func checkStaged(t *testing.T, img string, a artifactsIn, ref string) *meta.Staged {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := store.Block()
	st, ok, err := b.Staged()
	if !ok || err != nil {
		t.Fatalf("no staged record: %v", err)
	}
	if v, _ := b.Get(meta.TagTalosStagedImageRef); string(v) != ref || st.Image != ref {
		t.Errorf("staged ref %q, tag 0x07 %q, want %q", st.Image, v, ref)
	}
	if slots, _ := b.Slots(); slots.Phase != meta.PhaseStaged || st.Target != meta.SlotB {
		t.Errorf("phase %s target %s, want staged to b", slots.Phase, st.Target)
	}
	stage, err := d.Find(disk.LabelSTAGE)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{payload.Kernel: a.kernel, payload.Initramfs: a.initramfs} {
		art, ok := payload.Find(st.Artifacts, name)
		if !ok {
			t.Fatalf("no %s in %+v", name, st.Artifacts)
		}
		if art.SHA256 != sha(want) || art.Size != int64(len(want)) || art.Offset%payload.Align != 0 {
			t.Errorf("%s recorded as %+v, want sha256 %s size %d, aligned", name, art, sha(want), len(want))
		}
		got := make([]byte, art.Size)
		stage.ReadAt(got, art.Offset)
		if !bytes.Equal(got, want) {
			t.Errorf("%s bytes in STAGE differ from the image's", name)
		}
	}
	if err := payload.Verify(stage, stage.Size, st.Artifacts); err != nil {
		t.Error(err)
	}
	hb := make([]byte, payload.HeaderSize)
	start, _ := payload.Extent(st.Artifacts, stage.Size)
	stage.ReadAt(hb, start)
	h, err := payload.Unmarshal(hb)
	if err != nil || h.Digest != st.Digest || len(h.Artifacts) != len(st.Artifacts) {
		t.Errorf("payload header %+v, %v; want digest %s", h, err, st.Digest)
	}
	return st
}

func TestStageFromRegistry(t *testing.T) {
	reg := testRegistry(t, "", "")
	a := newArtifacts(1, 3*mib+17, 5*mib+3, "v2")
	img := buildImage(t, a, "amd64")
	push(t, reg+"/stagehand/os:v2", img, nil)
	dsk := testDisk(t, 32*mib)

	var last, total int64
	res := stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os:v2", Progress: func(d, tot int64) {
		if d < last {
			t.Errorf("progress went back from %d to %d", last, d)
		}
		last, total = d, tot
	}})
	if last != total || total <= int64(len(a.kernel)+len(a.initramfs)) {
		t.Errorf("progress ended at %d of %d", last, total)
	}
	st := checkStaged(t, dsk, a, reg+"/stagehand/os:v2")
	digest, _ := img.Digest()
	if st.Digest != digest.String() || res.Half != 0 || res.AlreadyStaged {
		t.Errorf("result %+v, staged digest %s, want %s in half 0", res, st.Digest, digest)
	}
	if _, ok := payload.Find(st.Artifacts, payload.Cmdline); !ok {
		t.Error("the command line artifact was not staged")
	}

	// The same image again, by digest: a no-op that says so.
	before := hashFile(t, dsk)
	res = stageOK(t, Options{Disk: dsk, Image: reg + "/stagehand/os@" + digest.String()})
	if !res.AlreadyStaged || hashFile(t, dsk) != before {
		t.Errorf("re-staging the same digest: %+v, disk changed: %v", res, hashFile(t, dsk) != before)
	}
}

func TestStageAlternatesHalvesAndClearsTheOld(t *testing.T) {
	reg := testRegistry(t, "", "")
	dsk := testDisk(t, 32*mib)
	var prev *meta.Staged
	for i, want := range []int{0, 1, 0} {
		a := newArtifacts(uint64(10+i), 2*mib, 3*mib, "v")
		ref := reg + "/os:" + string(rune('a'+i))
		push(t, ref, buildImage(t, a, "amd64"), nil)
		res := stageOK(t, Options{Disk: dsk, Image: ref})
		if res.Half != want {
			t.Errorf("stage %d went to half %d, want %d", i, res.Half, want)
		}
		st := checkStaged(t, dsk, a, ref)
		if prev != nil {
			// The superseded payload reads as zeros.
			d, _ := disk.Open(dsk, false)
			stage, _ := d.Find(disk.LabelSTAGE)
			start, end := payload.Extent(prev.Artifacts, stage.Size)
			buf := make([]byte, end-start)
			stage.ReadAt(buf, start)
			d.Close()
			if !bytes.Equal(buf, make([]byte, len(buf))) {
				t.Errorf("stage %d: the superseded payload in half %d was not cleared", i, 1-want)
			}
		}
		prev = st
	}
}

func TestStageTransports(t *testing.T) {
	a := newArtifacts(2, mib, 2*mib, "v3")
	img := buildImage(t, a, "amd64")
	dir := t.TempDir()
	writeLayout(t, dir+"/one", img, "v3")
	writeLayout(t, dir+"/two", img, "v3")
	writeLayout(t, dir+"/two", buildImage(t, newArtifacts(3, mib, mib, "v4"), "amd64"), "v4")
	archive := dir + "/os.tar"
	if err := tarballWrite(archive, img); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"oci:" + dir + "/one", "oci:" + dir + "/two:v3", "docker-archive:" + archive} {
		t.Run(ref, func(t *testing.T) {
			dsk := testDisk(t, 32*mib)
			stageOK(t, Options{Disk: dsk, Image: ref})
			checkStaged(t, dsk, a, ref)
		})
	}
}

func TestStageMultiArch(t *testing.T) {
	reg := testRegistry(t, "", "")
	amd, arm := newArtifacts(4, mib, mib, "amd"), newArtifacts(5, mib, mib, "arm")
	pushIndex(t, reg+"/os:multi", map[string]v1Image{"amd64": buildImage(t, amd, "amd64"), "arm64": buildImage(t, arm, "arm64")})
	dsk := testDisk(t, 32*mib)
	stageOK(t, Options{Disk: dsk, Image: reg + "/os:multi", Platform: platform("linux/amd64")})
	checkStaged(t, dsk, amd, reg+"/os:multi")
	dsk = testDisk(t, 32*mib)
	stageOK(t, Options{Disk: dsk, Image: reg + "/os:multi", Platform: platform("linux/arm64")})
	checkStaged(t, dsk, arm, reg+"/os:multi")
}

func TestStageWithAuth(t *testing.T) {
	reg := testRegistry(t, "fleet", "s3cret")
	a := newArtifacts(6, mib, mib, "v")
	push(t, reg+"/os:v", buildImage(t, a, "amd64"), staticKeychain{"fleet", "s3cret"})
	dsk := testDisk(t, 32*mib)
	stageOK(t, Options{Disk: dsk, Image: reg + "/os:v", Keychain: staticKeychain{"fleet", "s3cret"}})
	checkStaged(t, dsk, a, reg+"/os:v")
}

func TestStageOnLoopDevice(t *testing.T) {
	a := newArtifacts(7, 2*mib, 2*mib, "v")
	dir := t.TempDir()
	writeLayout(t, dir, buildImage(t, a, "amd64"), "v")
	img := testDisk(t, 32*mib)
	dev := disktest.Loop(t, img)
	stageOK(t, Options{Disk: dev, Image: "oci:" + dir + ":v"})
	checkStaged(t, dev, a, "oci:"+dir+":v")
	// A failure after bytes were written zeroes them again through
	// BLKZEROOUT: a second image whose last layer is hostile.
	bad := imageOf(t, goodLayer(t, newArtifacts(8, mib, mib, "")), craftedLayer(t, regEntry("../escape", []byte("x"))))
	writeLayout(t, dir, bad, "bad")
	before := hashFile(t, img)
	if _, err := Stage(context.Background(), Options{Disk: dev, Image: "oci:" + dir + ":bad"}); err == nil {
		t.Fatal("hostile image staged")
	}
	if hashFile(t, img) != before {
		t.Error("a refused stage changed the block device")
	}
}

func TestCancel(t *testing.T) {
	a := newArtifacts(9, mib, mib, "v")
	dir := t.TempDir()
	writeLayout(t, dir, buildImage(t, a, "amd64"), "v")
	dsk := testDisk(t, 32*mib)
	pristine := hashFile(t, dsk)
	if _, err := Cancel(context.Background(), dsk, fixedNow()); !errors.Is(err, ErrNothingStaged) {
		t.Fatalf("cancel with nothing staged: %v", err)
	}
	if hashFile(t, dsk) != pristine {
		t.Fatal("cancel with nothing staged changed the disk")
	}
	stageOK(t, Options{Disk: dsk, Image: "oci:" + dir})
	st, err := Cancel(context.Background(), dsk, fixedNow())
	if err != nil || st.Image != "oci:"+dir {
		t.Fatalf("cancel: %+v, %v", st, err)
	}
	status, err := ReadStatus(context.Background(), dsk)
	if err != nil {
		t.Fatal(err)
	}
	if status.Staged != nil || status.Slots.Phase != meta.PhaseIdle || len(status.Transitions) != 2 || status.Transitions[1].Reason != "cancelled oci:"+dir {
		t.Errorf("status after cancel: %+v", status)
	}
	// STAGE is all zeros again.
	d, _ := disk.Open(dsk, false)
	defer d.Close()
	stage, _ := d.Find(disk.LabelSTAGE)
	buf := make([]byte, stage.Size)
	stage.ReadAt(buf, 0)
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Error("STAGE still holds the cancelled payload")
	}
	_ = os.Remove
}
