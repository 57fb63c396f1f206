package stage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stagehand-dev/stagehand/boot/boottest"
	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/delta"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/internal/crcforge"
	"github.com/stagehand-dev/stagehand/internal/distribution"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// deltaMachine is a disk made by bootdisk.Init whose slot a holds v1 (a
// kernel and an initramfs, 3 MiB unless said), and a v2 that changes 64
// KiB of the initramfs and appends 100 KiB.
type deltaMachine struct {
	disk   string
	v1, v2 artifactsIn
}

func newDeltaMachine(t testing.TB, initramfs ...int) *deltaMachine {
	t.Helper()
	size := 3 * mib
	if len(initramfs) > 0 {
		size = initramfs[0]
	}
	dir := t.TempDir()
	k := boottest.FakeKernel(t, dir, "6.1.0-v1", 1*mib+100)
	kernel, err := os.ReadFile(k)
	if err != nil {
		t.Fatal(err)
	}
	v1 := artifactsIn{kernel, randomBytes(7, size), "v1"}
	i1 := filepath.Join(dir, "initrd-v1")
	if err := os.WriteFile(i1, v1.initramfs, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	l := disk.Layout{ESPSize: max(256*mib, 4*int64(size)), StageSize: 2*int64(size) + 16*mib}
	l.Size = l.MinSize()
	if _, err := bootdisk.Init(context.Background(), img, bootdisk.Config{Layout: l, Kernel: k, Initramfs: i1, Cmdline: "console=ttyS0", Version: "v1", LoaderEFI: k}); err != nil {
		t.Fatal(err)
	}
	v2 := artifactsIn{kernel, append(bytes.Clone(v1.initramfs), randomBytes(9, 100<<10)...), "v2"}
	copy(v2.initramfs[size/3:], randomBytes(8, 64<<10))
	return &deltaMachine{disk: img, v1: v1, v2: v2}
}

// logLines collects Options.Logf's lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) with(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			out = append(out, x)
		}
	}
	return out
}

// rangeLog counts the blob GETs a registry answers, and the bytes asked by
// Range; strip makes it ignore Range (it answers 200, the whole blob), and
// corrupt flips a byte of every 206.
type rangeLog struct {
	mu                     sync.Mutex
	ranged, whole          int
	strip, corrupt, refuse bool
}

func registryWith(t *testing.T, rl *rangeLog) string {
	t.Helper()
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			rl.mu.Lock()
			if r.Header.Get("Range") != "" && !rl.strip {
				rl.ranged++
			} else {
				rl.whole++
			}
			strip, corrupt, refuse := rl.strip, rl.corrupt, rl.refuse
			rl.mu.Unlock()
			if refuse && r.Header.Get("Range") != "" {
				http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
				return
			}
			if strip {
				r.Header.Del("Range")
			}
			if corrupt && r.Header.Get("Range") != "" {
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, r)
				b := rec.Body.Bytes()
				if len(b) > 0 {
					b[len(b)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func staged(t *testing.T, img string) *meta.Staged {
	t.Helper()
	store, d, err := disk.OpenMETA(context.Background(), img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, ok, err := store.Block().Staged()
	if !ok || err != nil {
		t.Fatalf("no staged record: %v", err)
	}
	return st
}

// TestDeltaFromSlot stages v2 from slot a's files: only the changed and
// appended bytes (and the chunks around them) are read, by Range, and the
// payload is v2's, byte for byte.
func TestDeltaFromSlot(t *testing.T) {
	m := newDeltaMachine(t)
	rl := &rangeLog{}
	reg := registryWith(t, rl)
	ref := reg + "/os:v2"
	push(t, ref, buildImage(t, m.v2, "amd64"), nil)
	var logs logLines
	var calls int
	var lastFetched, lastReused int64
	res := stageOK(t, Options{Disk: m.disk, Image: ref, Insecure: true, Logf: logs.logf, Transfer: func(f, r int64) {
		if f < lastFetched || r < lastReused {
			t.Errorf("Transfer went back: %d, %d after %d, %d", f, r, lastFetched, lastReused)
		}
		calls, lastFetched, lastReused = calls+1, f, r
	}})
	checkStaged(t, m.disk, m.v2, ref)
	tr := res.Staged.Transfer
	if calls == 0 || lastReused != tr.Reused || lastFetched > tr.Fetched {
		t.Errorf("Transfer told %d times, last %d fetched, %d reused; staging recorded %+v", calls, lastFetched, lastReused, tr)
	}
	total := int64(len(m.v2.kernel) + len(m.v2.initramfs))
	if tr == nil || tr.Reused < total*8/10 || tr.Fetched > total/5 || tr.Full != "" {
		t.Fatalf("transfer %+v: want most of %d bytes reused, under a fifth fetched", tr, total)
	}
	if got := staged(t, m.disk).Transfer; got == nil || *got != *tr {
		t.Errorf("META's transfer %+v, the result's %+v", got, tr)
	}
	t.Logf("transfer %+v; log: %q", tr, logs.lines)
	if l := logs.with("from this machine"); len(l) != 1 {
		t.Errorf("want one line saying what the delta takes from this machine; log: %q", logs.lines)
	}
	// The registry's side: the artifact layer only in ranges; whole, only
	// the config and the index layer.
	if rl.ranged == 0 || rl.whole > 2 {
		t.Errorf("the registry answered %d Range GETs and %d whole blob GETs: want ranges, and only the config and the index whole", rl.ranged, rl.whole)
	}
}

// TestDeltaFromStaged stages v1, then v2 over it: the payload STAGE holds
// is a seed too (here the only one besides the slot, which holds v1 too).
func TestDeltaFromStagedPayload(t *testing.T) {
	m := newStagedV1(t)
	if tr := staged(t, m.disk).Transfer; tr == nil || tr.Reused != 0 || tr.Fetched < int64(len(m.v1.initramfs)) {
		t.Fatalf("v1 on an empty disk: transfer %+v, want everything fetched", tr)
	}
	ref := "oci:" + m.layout + ":v2"
	res := stageOK(t, Options{Disk: m.disk, Image: ref})
	checkStaged(t, m.disk, m.v2, ref)
	if tr := res.Staged.Transfer; tr == nil || tr.Reused < int64(len(m.v2.initramfs))*8/10 || tr.Fetched > int64(len(m.v2.initramfs))/6 {
		t.Fatalf("v2 over staged v1: transfer %+v, want nearly all reused", tr)
	}
}

// stagedV1 is a disk with v1 (a 1 MiB kernel, a 4 MiB initramfs) staged
// from an OCI layout that holds v2 too (v1 with 32 KiB changed at 2 MiB):
// the payload STAGE holds is the only seed. initramfsAt is where the
// staged initramfs lies in the image file.
type stagedV1 struct {
	disk, layout string
	v1, v2       artifactsIn
	initramfsAt  int64
}

func newStagedV1(t *testing.T) *stagedV1 {
	t.Helper()
	m := &stagedV1{disk: testDisk(t, 32*mib), layout: filepath.Join(t.TempDir(), "layout")}
	m.v1 = newArtifacts(1, mib, 4*mib, "v1")
	m.v2 = artifactsIn{m.v1.kernel, bytes.Clone(m.v1.initramfs), "v2"}
	copy(m.v2.initramfs[2*mib:], randomBytes(3, 32<<10))
	writeLayout(t, m.layout, buildImage(t, m.v1, "amd64"), "v1")
	writeLayout(t, m.layout, buildImage(t, m.v2, "amd64"), "v2")
	stageOK(t, Options{Disk: m.disk, Image: "oci:" + m.layout + ":v1"})
	art, _ := payload.Find(staged(t, m.disk).Artifacts, payload.Initramfs)
	d, err := disk.Open(m.disk, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stg, err := d.Find(disk.LabelSTAGE)
	if err != nil {
		t.Fatal(err)
	}
	m.initramfsAt = stg.Offset + art.Offset
	return m
}

// overwriteWhenPlanned is a Logf that, once the delta's plan is logged
// (the seeds are cut, nothing copied yet), writes data at off of the
// image file: a seed that changes under the staging.
func overwriteWhenPlanned(t *testing.T, logs *logLines, img string, off int64, data []byte) (func(string, ...any), *bool) {
	done := new(bool)
	return func(format string, args ...any) {
		logs.logf(format, args...)
		if !*done && strings.Contains(format, "from this machine") {
			*done = true
			writeAt(t, img, off, data)
		}
	}, done
}

// writeAt writes data at off of the image file.
func writeAt(t *testing.T, img string, off int64, data []byte) {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Error(err)
	}
}

// TestDeltaFallback: a registry that ignores Range, one that serves wrong
// bytes in its ranges, and an image without an index are all staged whole,
// with one line saying why, and the payload is right.
func TestDeltaFallback(t *testing.T) {
	for _, c := range []struct {
		name    string
		strip   bool
		corrupt bool
		refuse  bool
		noIndex bool
		why     string
	}{
		{"registry ignores Range", true, false, false, false, "whole blob (200)"},
		{"registry serves wrong bytes", false, true, false, false, "do not match its index"},
		{"registry refuses ranges", false, false, true, false, "refused the range (416)"},
		{"image without an index", false, false, false, true, "carries no delta index"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newDeltaMachine(t)
			reg := registryWith(t, &rangeLog{strip: c.strip, corrupt: c.corrupt, refuse: c.refuse})
			ref := reg + "/os:v2"
			im := buildImage(t, m.v2, "amd64")
			if c.noIndex {
				im = buildImageNoIndex(t, m.v2)
			}
			push(t, ref, im, nil)
			var logs logLines
			res := stageOK(t, Options{Disk: m.disk, Image: ref, Insecure: true, Logf: logs.logf})
			checkStaged(t, m.disk, m.v2, ref)
			lines := logs.with("pulling the whole image")
			if len(lines) != 1 || !strings.Contains(lines[0], c.why) {
				t.Errorf("want one line saying %q; log: %q", c.why, logs.lines)
			}
			tr := res.Staged.Transfer
			if tr == nil || tr.Reused != 0 || tr.Fetched < int64(len(m.v2.initramfs)) || !strings.Contains(tr.Full, c.why) {
				t.Errorf("transfer %+v: want all fetched, and why", tr)
			}
		})
	}
}

// TestDeltaLyingSeed: the slot's initramfs changes on disk after its
// chunks were indexed (here: before staging, under a record that still
// names it) — what it should give is fetched, never trusted.
func TestDeltaLyingSeed(t *testing.T) {
	m := newStagedV1(t)
	ref := "oci:" + m.layout + ":v2"
	var logs logLines
	logf, done := overwriteWhenPlanned(t, &logs, m.disk, m.initramfsAt+3*mib, bytes.Repeat([]byte{0xaa}, 4096))
	res := stageOK(t, Options{Disk: m.disk, Image: ref, Logf: logf})
	checkStaged(t, m.disk, m.v2, ref)
	if !*done || len(logs.with("is not the one it was taken for")) != 1 {
		t.Errorf("want one line about the changed seed; log: %q", logs.lines)
	}
	if tr := res.Staged.Transfer; tr == nil || tr.Full != "" || tr.Fetched < 16<<10 {
		t.Errorf("transfer %+v: want a delta that fetched the changed chunk", tr)
	}
}

// TestDeltaCancelLeavesDisk: a staging cancelled in the middle of a delta
// leaves the disk byte for byte as it was.
func TestDeltaCancelLeavesDisk(t *testing.T) {
	m := newDeltaMachine(t)
	reg := registryWith(t, &rangeLog{})
	ref := reg + "/os:v2"
	push(t, ref, buildImage(t, m.v2, "amd64"), nil)
	before := hashFile(t, m.disk)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var read int64
	_, err := Stage(ctx, Options{Disk: m.disk, Image: ref, Insecure: true, Now: fixedNow, Progress: func(done, _ int64) {
		if read = done; done > mib {
			cancel()
		}
	}})
	if err == nil || ctx.Err() == nil {
		t.Fatalf("Stage: %v after %d bytes, want the cancel's error", err, read)
	}
	if hashFile(t, m.disk) != before {
		t.Error("the disk changed")
	}
}

// buildImageNoIndex builds an installer image without its delta index.
func buildImageNoIndex(t testing.TB, a artifactsIn) v1Image {
	t.Helper()
	dir := t.TempDir()
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.xz")
	os.WriteFile(k, a.kernel, 0o644)
	os.WriteFile(i, a.initramfs, 0o644)
	img, err := installer.Build(installer.BuildOptions{Kernel: k, Initramfs: i, Version: a.version, Cmdline: "console=ttyS0", Arch: "amd64", TempDir: dir, NoIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestPlan says what staging v2 would fetch and take, and writes nothing.
func TestPlan(t *testing.T) {
	m := newDeltaMachine(t)
	reg := registryWith(t, &rangeLog{})
	ref := reg + "/os:v2"
	push(t, ref, buildImage(t, m.v2, "amd64"), nil)
	before := hashFile(t, m.disk)
	p, err := Plan(context.Background(), Options{Disk: m.disk, Image: ref, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if hashFile(t, m.disk) != before {
		t.Error("Plan changed the disk")
	}
	var fromSlot int64
	for _, s := range p.Seeds {
		if s.Name == "slot a initramfs" || s.Name == "slot a kernel" {
			fromSlot += s.Bytes
		}
	}
	if p.Full != "" || p.Fetch > p.Total/5 || p.Ranges == 0 || fromSlot < int64(len(m.v2.initramfs))*8/10 {
		t.Errorf("plan %+v: want under a fifth fetched, most from slot a", p)
	}
	no, err := Plan(context.Background(), Options{Disk: m.disk, Image: ref, Insecure: true, NoDelta: true})
	if err != nil || no.Fetch != no.Total || no.Full == "" {
		t.Errorf("plan with NoDelta: %+v, %v; want all fetched, and why", no, err)
	}
	// What it said is what staging then does.
	res := stageOK(t, Options{Disk: m.disk, Image: ref, Insecure: true})
	if tr := res.Staged.Transfer; tr.Fetched != p.Fetch {
		t.Errorf("staging fetched %d bytes, the plan said %d", tr.Fetched, p.Fetch)
	}
	// Staged now: staging it again would fetch nothing, as Stage says.
	again, err := Plan(context.Background(), Options{Disk: m.disk, Image: ref, Insecure: true})
	if err != nil || !again.AlreadyStaged || again.Fetch != 0 {
		t.Errorf("plan of the staged image: %+v, %v; want already staged, nothing to fetch", again, err)
	}
}

// TestDeltaDockerRegistry stages v2 as a delta from Debian's
// docker-registry, a real registry whose blob GETs answer Range with 206
// (http.ServeContent): most of v2 comes from slot a, the rest in ranges.
func TestDeltaDockerRegistry(t *testing.T) {
	reg, err := distribution.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	m := newDeltaMachine(t)
	ref := reg.Addr + "/os:v2"
	push(t, ref, buildImage(t, m.v2, "amd64"), nil)
	var logs logLines
	res := stageOK(t, Options{Disk: m.disk, Image: ref, Insecure: true, Logf: logs.logf})
	checkStaged(t, m.disk, m.v2, ref)
	total := int64(len(m.v2.kernel) + len(m.v2.initramfs))
	if tr := res.Staged.Transfer; tr == nil || tr.Full != "" || tr.Reused < total*8/10 || tr.Fetched > total/5 {
		t.Errorf("transfer %+v; log %q: want a delta, most of %d bytes reused", tr, logs.lines, total)
	}
}

// TestDeltaDockerArchive stages v2 from a docker archive (`docker save`'s
// format, which keeps no annotation: the index is found as the last
// layer) as a delta from slot a; an archive of an image without an index
// is staged whole.
func TestDeltaDockerArchive(t *testing.T) {
	for _, c := range []struct {
		name    string
		noIndex bool
	}{{"with its index", false}, {"without an index", true}} {
		t.Run(c.name, func(t *testing.T) {
			m := newDeltaMachine(t)
			im := buildImage(t, m.v2, "amd64")
			if c.noIndex {
				im = buildImageNoIndex(t, m.v2)
			}
			archive := filepath.Join(t.TempDir(), "os-v2.tar")
			if err := tarballWrite(archive, im); err != nil {
				t.Fatal(err)
			}
			ref := "docker-archive:" + archive
			var logs logLines
			res := stageOK(t, Options{Disk: m.disk, Image: ref, Logf: logs.logf})
			checkStaged(t, m.disk, m.v2, ref)
			tr := res.Staged.Transfer
			total := int64(len(m.v2.kernel) + len(m.v2.initramfs))
			switch {
			case c.noIndex && (tr.Reused != 0 || !strings.Contains(tr.Full, "no delta index")):
				t.Errorf("transfer %+v; log %q: want a whole pull, saying why", tr, logs.lines)
			case !c.noIndex && (tr.Full != "" || tr.Reused < total*8/10):
				t.Errorf("transfer %+v; log %q: want a delta, most of %d bytes reused", tr, logs.lines, total)
			}
		})
	}
}

// TestDeltaSeedForgedCRC: a chunk of a seed holds other bytes than the
// index's chunk of the same length and CRC-32C (four bytes forged), found
// by the cut (the seed was forged before staging) or changed after it.
// The chunk passes the Reader's CRC-32C check, the rebuilt blob fails its
// SHA-256: the delta is given up with one line, and the image is staged
// whole, right.
func TestDeltaSeedForgedCRC(t *testing.T) {
	for _, c := range []struct {
		name   string
		before bool // forged before the staging; else once its delta is planned
	}{{"found by the cut", true}, {"changed after the cut", false}} {
		t.Run(c.name, func(t *testing.T) {
			m := newStagedV1(t)
			ref := "oci:" + m.layout + ":v2"
			// The chunk of the staged initramfs that holds its byte at 3 MiB.
			var chunkOff, chunkLen int64
			delta.Cut(bytes.NewReader(m.v1.initramfs), delta.DefaultParams, func(off int64, data []byte) error {
				if off <= 3*mib && 3*mib < off+int64(len(data)) {
					chunkOff, chunkLen = off, int64(len(data))
				}
				return nil
			})
			forged := bytes.Clone(m.v1.initramfs[chunkOff : chunkOff+chunkLen])
			want := crc32.Checksum(forged, crc32.MakeTable(crc32.Castagnoli))
			// Before the chunk's Min bytes: the cut points stay where they were.
			forged[100] ^= 0x5a
			if err := crcforge.Forge(forged, 200, want); err != nil {
				t.Fatal(err)
			}
			var logs logLines
			logf, done := logs.logf, new(bool)
			if c.before {
				writeAt(t, m.disk, m.initramfsAt+chunkOff, forged)
				*done = true
			} else {
				logf, done = overwriteWhenPlanned(t, &logs, m.disk, m.initramfsAt+chunkOff, forged)
			}
			res := stageOK(t, Options{Disk: m.disk, Image: ref, Logf: logf})
			checkStaged(t, m.disk, m.v2, ref)
			lines := logs.with("pulling the whole image")
			if !*done || len(lines) != 1 || !strings.Contains(lines[0], "SHA-256") {
				t.Errorf("want one line giving the delta up for the blob's SHA-256; log: %q", logs.lines)
			}
			if tr := res.Staged.Transfer; tr == nil || tr.Reused != 0 || tr.Full == "" {
				t.Errorf("transfer %+v: want a whole pull, and why", tr)
			}
		})
	}
}

// TestDeltaLyingIndex: an image whose index names its layer (digest and
// size) but whose chunks around v2's change are v1's, which this machine
// holds: the Reader would rebuild v2 with v1's bytes there, each chunk
// passing its own check. Its check of the whole blob catches it, the delta
// is given up, and v2 is staged whole: a delta changes where the bytes
// come from, never which bytes are accepted.
func TestDeltaLyingIndex(t *testing.T) {
	m := newStagedV1(t)
	v1Layer, v2Img := artifactLayer(t, buildImage(t, m.v1, "amd64")), buildImage(t, m.v2, "amd64")
	v2Layer := artifactLayer(t, v2Img)
	v2Digest, err := v2Layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	index := func(l v1.Layer) *delta.Index {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		x, err := delta.Build(rc, delta.DefaultParams)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	x1, x2 := index(v1Layer), index(v2Layer)
	// v2's chunks, but v1's from the first that differs to where the two
	// cut alike again.
	i := 0
	for i < min(len(x1.Chunks), len(x2.Chunks)) && x1.Chunks[i] == x2.Chunks[i] {
		i++
	}
	// [i, j1) of v1's chunks and [i, j2) of v2's cover the same bytes.
	if i == len(x1.Chunks) || i == len(x2.Chunks) {
		t.Fatal("v1's and v2's layers cut alike")
	}
	j1, j2 := i+1, i+1
	end1, end2 := x1.Chunks[i].Off+int64(x1.Chunks[i].Len), x2.Chunks[i].Off+int64(x2.Chunks[i].Len)
	for end1 != end2 {
		if end1 < end2 {
			end1 += int64(x1.Chunks[j1].Len)
			j1++
		} else {
			end2 += int64(x2.Chunks[j2].Len)
			j2++
		}
	}
	lie := *x2
	lie.Chunks = append(append(append([]delta.Chunk(nil), x2.Chunks[:i]...), x1.Chunks[i:j1]...), x2.Chunks[j2:]...)
	copy(lie.SHA256[:], mustHex(t, v2Digest.Hex))
	raw, err := lie.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: installer.IndexPath, Mode: 0o644, Size: int64(len(raw))})
	tw.Write(raw)
	tw.Close()
	cfg, err := v2Img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs, cfg.History = nil, nil // appending the layers sets them
	img, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, v2Layer); err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(tb.Bytes(), types.OCIUncompressedLayer), MediaType: types.OCIUncompressedLayer,
		Annotations: map[string]string{installer.IndexAnnotation: v2Digest.String()}})
	if err != nil {
		t.Fatal(err)
	}
	writeLayout(t, m.layout, img, "lying")
	ref := "oci:" + m.layout + ":lying"
	var logs logLines
	res := stageOK(t, Options{Disk: m.disk, Image: ref, Logf: logs.logf})
	checkStaged(t, m.disk, m.v2, ref)
	lines := logs.with("pulling the whole image")
	if len(lines) != 1 || !strings.Contains(lines[0], "SHA-256") {
		t.Errorf("want one line giving the delta up for the blob's SHA-256; log: %q", logs.lines)
	}
	if tr := res.Staged.Transfer; tr == nil || tr.Reused != 0 || tr.Full == "" {
		t.Errorf("transfer %+v: want a whole pull, and why", tr)
	}
}

// artifactLayer is an installer image's first layer, its artifacts.
func artifactLayer(t *testing.T, img v1.Image) v1.Layer {
	t.Helper()
	ls, err := img.Layers()
	if err != nil || len(ls) == 0 {
		t.Fatalf("layers: %d, %v", len(ls), err)
	}
	return ls[0]
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
