package stage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// benchImage pushes an installer image of about size bytes to reg and
// returns its reference.
func benchImage(b *testing.B, reg string, size int, tag string) string {
	b.Helper()
	a := newArtifacts(uint64(size), 16*mib, size-16*mib, tag)
	ref := reg + "/bench:" + tag
	push(b, ref, buildImage(b, a, "amd64"), nil)
	return ref
}

// BenchmarkStageVsPull stages a 256 MiB installer image from a registry on
// 127.0.0.1 into an image file (hashing, verifying and syncing), and pulls
// the same image into an OCI layout with go-containerregistry, in turns. It
// reports both throughputs and their ratio (stage/pull, budget ≥ 1.0).
func BenchmarkStageVsPull(b *testing.B) {
	const size = 256 * mib
	reg := testRegistry(b, "", "")
	ref := benchImage(b, reg, size, "256")
	dsk := testDisk(b, 2*size+64*mib)
	r, _ := name.ParseReference(ref)
	var stageT, pullT []float64
	// Each timed run starts on a settled machine: the dirty pages the
	// previous run left (the pull never syncs) are written out untimed.
	settle := func() { b.StopTimer(); syscall.Sync(); b.StartTimer() }
	for b.Loop() {
		settle()
		start := time.Now()
		if _, err := Stage(context.Background(), Options{Disk: dsk, Image: ref}); err != nil {
			b.Fatal(err)
		}
		stageT = append(stageT, time.Since(start).Seconds())
		b.StopTimer()
		if _, err := Cancel(context.Background(), dsk, time.Now()); err != nil {
			b.Fatal(err)
		}
		dir := filepath.Join(b.TempDir(), "layout")
		b.StartTimer()
		settle()
		start = time.Now()
		img, err := remote.Image(r)
		if err != nil {
			b.Fatal(err)
		}
		p, err := layout.Write(dir, empty.Index)
		if err == nil {
			err = p.AppendImage(img)
		}
		if err != nil {
			b.Fatal(err)
		}
		pullT = append(pullT, time.Since(start).Seconds())
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
	b.Logf("stage %v\npull %v", stageT, pullT)
	s, p := median(stageT), median(pullT)
	b.ReportMetric(size/s/1e6, "stage-MB/s")
	b.ReportMetric(size/p/1e6, "pull-MB/s")
	b.ReportMetric(p/s, "ratio")
}

// BenchmarkStageRSS stages 64 MiB and 512 MiB images with the stager binary
// and reports its peak RSS for each (budget ≤ 64 MiB, and within 10% of
// each other).
func BenchmarkStageRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "stager")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/stager").CombinedOutput(); err != nil {
		b.Fatalf("building stager: %v: %s", err, out)
	}
	reg := testRegistry(b, "", "")
	for _, size := range []int{64 * mib, 512 * mib} {
		ref := benchImage(b, reg, size, "rss")
		dsk := testDisk(b, int64(2*size+64*mib))
		var peaks []float64
		for range max(b.N, 1) {
			// GNU time forks a small process of its own before exec: the
			// child's ru_maxrss is stager's alone, not this (large) test
			// process's, which a vfork from here would carry over.
			out, err := exec.Command("/usr/bin/time", "-f", "maxrss=%M", bin, "--image", ref, "--disk", dsk).CombinedOutput()
			if err != nil {
				b.Fatalf("stager: %v: %s", err, out)
			}
			var kb float64
			if _, err := fmt.Sscanf(string(out[bytes.LastIndex(out, []byte("maxrss=")):]), "maxrss=%f", &kb); err != nil {
				b.Fatalf("reading peak RSS from %q: %v", out, err)
			}
			peaks = append(peaks, kb/1024)
			Cancel(context.Background(), dsk, time.Now())
		}
		b.ReportMetric(median(peaks), "peak-RSS-MiB-"+map[int]string{64 * mib: "64", 512 * mib: "512"}[size])
		runtime.GC()
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
