package stage

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/internal/benchstat"
	"github.com/stagehand-dev/stagehand/internal/distribution"
	"github.com/stagehand-dev/stagehand/internal/gobuild"

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
	s, p := benchstat.Median(stageT), benchstat.Median(pullT)
	b.ReportMetric(size/s/1e6, "stage-MB/s")
	b.ReportMetric(size/p/1e6, "pull-MB/s")
	b.ReportMetric(p/s, "ratio")
	// The spread: each run's pair.
	var ratios []float64
	for i := range stageT {
		ratios = append(ratios, pullT[i]/stageT[i])
	}
	b.ReportMetric(slices.Min(ratios), "ratio-lo")
	b.ReportMetric(slices.Max(ratios), "ratio-hi")
	benchstat.Report(b, stageT, "stage-s")
	benchstat.Report(b, pullT, "pull-s")
}

// BenchmarkStageSize stages installer images of 64, 256 and 512 MiB from a
// registry on 127.0.0.1 into an image file, the whole of stage.Stage
// (manifest, blobs streamed, hashed, verified and written with O_DIRECT,
// synced, META committed), and reports stage-s, the median time with its
// min and max (stage-s-lo, stage-s-hi). Staging should take time in
// proportion to the size: time(512)/time(64) within 8 ± 25%.
func BenchmarkStageSize(b *testing.B) {
	reg := testRegistry(b, "", "")
	for _, size := range []int{64 * mib, 256 * mib, 512 * mib} {
		b.Run(fmt.Sprintf("size=%dMiB", size/mib), func(b *testing.B) {
			ref := benchImage(b, reg, size, fmt.Sprint(size/mib))
			dsk := testDisk(b, int64(2*size+64*mib))
			var secs []float64
			for b.Loop() {
				b.StopTimer()
				syscall.Sync()
				b.StartTimer()
				start := time.Now()
				if _, err := Stage(context.Background(), Options{Disk: dsk, Image: ref}); err != nil {
					b.Fatal(err)
				}
				secs = append(secs, time.Since(start).Seconds())
				b.StopTimer()
				if _, err := Cancel(context.Background(), dsk, time.Now()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			benchstat.Report(b, secs, "stage-s")
			b.ReportMetric(float64(size)/benchstat.Median(secs)/1e6, "MB/s")
		})
	}
}

// BenchmarkStageRSS stages 64 MiB and 512 MiB images with the stager binary
// and reports its peak RSS for each (budget ≤ 64 MiB, and within 10% of
// each other).
func BenchmarkStageRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "stager")
	if err := gobuild.Static(".", runtime.GOARCH, bin, "../cmd/stager"); err != nil {
		b.Fatal(err)
	}
	reg := testRegistry(b, "", "")
	sizes := []int{64 * mib, 512 * mib}
	refs, disks := map[int]string{}, map[int]string{}
	for _, size := range sizes {
		refs[size] = benchImage(b, reg, size, fmt.Sprintf("rss%d", size/mib))
		disks[size] = testDisk(b, int64(2*size+64*mib))
	}
	peaks := map[int][]float64{}
	for b.Loop() {
		for _, size := range sizes {
			// GNU time forks a small process of its own before exec: the
			// child's ru_maxrss is stager's alone, not this (large) test
			// process's, which a vfork from here would carry over.
			out, err := exec.Command("/usr/bin/time", "-f", "maxrss=%M", bin, "--image", refs[size], "--disk", disks[size]).CombinedOutput()
			if err != nil {
				b.Fatalf("stager: %v: %s", err, out)
			}
			var kb float64
			if _, err := fmt.Sscanf(string(out[bytes.LastIndex(out, []byte("maxrss=")):]), "maxrss=%f", &kb); err != nil {
				b.Fatalf("reading peak RSS from %q: %v", out, err)
			}
			peaks[size] = append(peaks[size], kb/1024)
			Cancel(context.Background(), disks[size], time.Now())
		}
	}
	for _, size := range sizes {
		benchstat.Report(b, peaks[size], fmt.Sprintf("peak-RSS-MiB-%d", size/mib))
	}
}

// BenchmarkStageDelta stages v2 (v1's 64 MiB initramfs with 64 KiB
// changed and 100 KiB appended) on a disk whose slot a holds v1, as a delta
// and as a whole pull (NoDelta), in turns, from Debian's docker-registry on
// 127.0.0.1 behind a proxy that counts what it sends, directly and through
// a 100 Mbit/s link. It reports, per link, each
// way's time (delta-s, full-s, medians with -lo/-hi), their ratio
// (delta/full: budget ≤ 1.2 on 127.0.0.1; at 100 Mbit/s the time falls
// with the bytes), and the bytes the registry sent for each, counted at
// the registry's side (delta-bytes, full-bytes, fetched-%).
func BenchmarkStageDelta(b *testing.B) {
	for _, link := range []struct {
		name string
		rate float64
	}{{"127.0.0.1", 0}, {"100Mbit", 100e6 / 8}} {
		b.Run("link="+link.name, func(b *testing.B) {
			m := newDeltaMachine(b, 64*mib)
			reg, err := distribution.Start(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(reg.Stop)
			proxy := distribution.NewProxy(reg.Addr)
			srv := httptest.NewServer(proxy)
			b.Cleanup(srv.Close)
			ref := strings.TrimPrefix(srv.URL, "http://") + "/os:v2"
			push(b, ref, buildImage(b, m.v2, "amd64"), nil)
			proxy.Rate = link.rate
			var deltaT, fullT, ratio []float64
			var deltaB, fullB int64
			one := func(noDelta bool) (float64, int64) {
				b.StopTimer()
				syscall.Sync()
				before := proxy.Bytes()
				b.StartTimer()
				start := time.Now()
				if _, err := Stage(context.Background(), Options{Disk: m.disk, Image: ref, NoDelta: noDelta, Logf: b.Logf}); err != nil {
					b.Fatal(err)
				}
				d := time.Since(start).Seconds()
				b.StopTimer()
				n := proxy.Bytes() - before
				if _, err := Cancel(context.Background(), m.disk, time.Now()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				return d, n
			}
			for b.Loop() {
				d, dn := one(false)
				f, fn := one(true)
				deltaT, fullT, ratio = append(deltaT, d), append(fullT, f), append(ratio, d/f)
				deltaB, fullB = dn, fn
			}
			benchstat.Report(b, deltaT, "delta-s")
			benchstat.Report(b, fullT, "full-s")
			benchstat.Report(b, ratio, "delta/full")
			b.ReportMetric(float64(deltaB), "delta-bytes")
			b.ReportMetric(float64(fullB), "full-bytes")
			b.ReportMetric(100*float64(deltaB)/float64(fullB), "fetched-%")
		})
	}
}
