package stage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/bootloader"
	"github.com/stagehand-dev/stagehand/delta"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// maxIndex bounds the index layer read into memory (an index of 36 bytes
// per 32 KiB chunk: 64 MiB describes about 50 GiB).
const maxIndex = 64 << 20

// deltaLayer is a layer staged from the machine's bytes and ranges of its
// blob: the plan, the source of the ranges, and the reader once opened.
type deltaLayer struct {
	plan   *delta.Plan
	src    delta.Source
	reader *delta.Reader
}

// deltaError marks a staging that failed in its delta part (a range the
// source would not serve, bytes that did not match the index): Stage then
// pulls the whole image.
type deltaError struct{ err error }

func (e *deltaError) Error() string { return e.err.Error() }
func (e *deltaError) Unwrap() error { return e.err }

// deltaReadCloser wraps a delta.Reader's errors in deltaError.
type deltaReadCloser struct{ r *delta.Reader }

func (d deltaReadCloser) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		// Stage does not retry once its context is done; a dial timeout
		// (DeadlineExceeded too) with the context live falls back.
		err = &deltaError{err}
	}
	return n, err
}

func (d deltaReadCloser) Close() error { return d.r.Close() }

// seedSet is the machine's bytes a delta may copy from, and what to close.
type seedSet struct {
	seeds   []delta.Seed
	closers []io.Closer
}

func (s *seedSet) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

// findIndex returns the image's delta index and the layer it describes,
// reading the index layer (kept in memory, so that the extractor does not
// read it again). why says why there is none.
func (img *image) findIndex(src *Source) (idx *delta.Index, layer int, why string, err error) {
	if src.Transport == DockerArchive {
		// Its manifest is computed by hashing every layer, and keeps no
		// annotation: not asked for.
		if len(img.layers) < 2 {
			return nil, 0, "the image carries no delta index (build it with `stager image build`)", nil
		}
		return img.findArchiveIndex(src)
	}
	m, err := img.img.Manifest()
	if err != nil {
		return nil, 0, "", fmt.Errorf("reading the manifest of %s: %w", src, err)
	}
	desc, of, ok := installer.IndexOf(m)
	if !ok {
		return nil, 0, "the image carries no delta index (build it with `stager image build`)", nil
	}
	layer, at := -1, -1
	for i, l := range m.Layers {
		switch l.Digest {
		case of:
			layer = i
		case desc.Digest:
			at = i
		}
	}
	if layer < 0 || at < 0 || at >= len(img.layers) || layer >= len(img.layers) {
		return nil, 0, "the image's delta index names a layer it does not have", nil
	}
	rc, err := img.layers[at].open()
	if err != nil {
		return nil, 0, "", fmt.Errorf("reading the delta index of %s: %w", src, err)
	}
	idx, why, err = img.readIndexLayer(src, at, rc, nil, desc.Digest)
	if idx == nil {
		return nil, 0, why, err
	}
	ls := img.layers[layer]
	if idx.Size != ls.size || ls.digest == nil || idx.Digest() != ls.digest.String() {
		return nil, 0, "its delta index describes another blob than the layer it names", nil
	}
	return idx, layer, "", nil
}

// findArchiveIndex is findIndex in a docker archive, whose manifest keeps
// no annotation: the index is the last layer when that layer is an index
// layer (installer.ReadIndex reads it), and it describes the layer whose
// diff ID is its blob's digest (an uncompressed layer). The extractor
// checks the index layer against its diff ID as it checks every layer.
func (img *image) findArchiveIndex(src *Source) (*delta.Index, int, string, error) {
	none := "the image carries no delta index (build it with `stager image build`)"
	at := len(img.layers) - 1
	rc, err := img.layers[at].open()
	if err != nil {
		return nil, 0, "", fmt.Errorf("reading the last layer of %s: %w", src, err)
	}
	// An index layer's first tar header names stagehand/ (its directory
	// or its file): any other last layer is not read further.
	head := make([]byte, 512)
	if _, err := io.ReadFull(rc, head); err != nil || !bytes.HasPrefix(head, []byte(path.Dir(installer.IndexPath)+"/")) {
		rc.Close()
		return nil, 0, none, nil
	}
	idx, why, err := img.readIndexLayer(src, at, rc, head, img.layers[at].diffID)
	if idx == nil {
		return nil, 0, why, err
	}
	for i, l := range img.layers[:at] {
		if l.diffID.String() == idx.Digest() {
			return idx, i, "", nil
		}
	}
	return nil, 0, "its delta index describes none of its layers", nil
}

// readIndexLayer reads the rest of the index layer at from rc (head read
// from it already), checks it against want, keeps it in memory for the
// extractor, which would read it again, and parses the index. why says
// why there is no usable index.
func (img *image) readIndexLayer(src *Source, at int, rc io.ReadCloser, head []byte, want v1.Hash) (*delta.Index, string, error) {
	rest, err := io.ReadAll(io.LimitReader(rc, maxIndex+1-int64(len(head))))
	rc.Close()
	if err != nil {
		return nil, "", fmt.Errorf("reading the delta index of %s: %w", src, err)
	}
	raw := append(head, rest...)
	if len(raw) > maxIndex {
		return nil, fmt.Sprintf("its delta index layer is over %d MiB", maxIndex>>20), nil
	}
	if got := sha256Hash(raw); got != want {
		return nil, "", fmt.Errorf("the delta index layer of %s: digest is %s, the image says %s", src, got, want)
	}
	img.layers[at].open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
	b, err := installer.ReadIndex(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Sprintf("its delta index layer is unreadable (%v)", err), nil
	}
	idx, err := delta.Parse(b)
	if err != nil {
		return nil, fmt.Sprintf("its delta index is unreadable (%v)", err), nil
	}
	return idx, "", nil
}

// machineSeeds opens the bytes the machine holds that an upgrade may
// share: the payload STAGE holds (old), and each slot's files on the ESP.
// What cannot be opened is left out, with a line to logf.
func machineSeeds(ctx context.Context, d *disk.Disk, stage *disk.Region, old *meta.Staged, logf func(string, ...any)) *seedSet {
	s := &seedSet{}
	if old != nil {
		for _, a := range old.Artifacts {
			if a.Name == payload.Kernel || a.Name == payload.Initramfs || a.Name == payload.UKI {
				s.seeds = append(s.seeds, delta.Seed{Name: "staged " + a.Name, R: io.NewSectionReader(stage, a.Offset, a.Size), Size: a.Size})
			}
		}
	}
	esp, err := d.Find(disk.LabelESP)
	if err != nil {
		logf("delta: no ESP to take the slots' files from: %v", err)
		return s
	}
	vol, _, err := fat.View(esp, esp.Size)
	if err != nil {
		logf("delta: the ESP cannot be read (%v): the slots' files are not used", err)
		return s
	}
	l := bootloader.Find(vol, bootloader.Options{Cmdline: new(string)})
	for _, slot := range []meta.Slot{meta.SlotA, meta.SlotB} {
		f, err := l.OpenSlot(ctx, slot)
		if err != nil {
			continue // an empty slot
		}
		s.closers = append(s.closers, f)
		for i, c := range f.Closers {
			ra, ok := c.(interface {
				io.ReaderAt
				Size() int64
			})
			if !ok {
				continue
			}
			s.seeds = append(s.seeds, delta.Seed{Name: slotFileName(slot, f, i), R: ra, Size: ra.Size()})
		}
	}
	return s
}

// slotFileName names the i-th file of a slot, for messages.
func slotFileName(slot meta.Slot, f *boot.SlotFiles, i int) string {
	switch {
	case f.UKI != nil:
		return "slot " + string(slot) + " UKI"
	case i == 0:
		return "slot " + string(slot) + " kernel"
	case len(f.Closers) == 2:
		return "slot " + string(slot) + " initramfs"
	}
	return fmt.Sprintf("slot %s initramfs %d", slot, i)
}

// rangeSource is where the ranges of layer i's blob are read: the
// registry by HTTP Range, the layout's blob file, the archive read forward.
func (o *Options) rangeSource(ctx context.Context, src *Source, img *image, i int) (delta.Source, error) {
	ls := img.layers[i]
	switch src.Transport {
	case Registry:
		repo := src.Ref.Context()
		auth, err := authn.Resolve(ctx, o.Keychain, repo)
		if err != nil {
			return nil, err
		}
		rt, err := transport.NewWithContext(ctx, repo.Registry, auth, http.DefaultTransport, []string{repo.Scope(transport.PullScope)})
		if err != nil {
			return nil, describeRegistryError(src.Ref, err)
		}
		u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), ls.digest)
		return &delta.HTTPSource{Client: &http.Client{Transport: rt}, URL: u, Size: ls.size}, nil
	case OCILayout:
		f, err := os.Open(filepath.Join(src.Path, "blobs", ls.digest.Algorithm, ls.digest.Hex))
		if err != nil {
			return nil, err
		}
		return &fileSource{ReaderAtSource: delta.ReaderAtSource{R: f, Size: ls.size}, f: f}, nil
	}
	return &forwardSource{open: ls.open}, nil
}

// fileSource is a layout's blob file; closed with the staging.
type fileSource struct {
	delta.ReaderAtSource
	f *os.File
}

func (f *fileSource) Close() error { return f.f.Close() }

// forwardSource reads ranges from a stream read forward (a layer in a
// docker archive): the ranges a Reader asks come in order; one behind
// reopens the stream.
type forwardSource struct {
	open func() (io.ReadCloser, error)
	rc   io.ReadCloser
	at   int64
}

func (f *forwardSource) OpenRange(_ context.Context, off, n int64) (io.ReadCloser, error) {
	if f.rc == nil || off < f.at {
		f.Close()
		rc, err := f.open()
		if err != nil {
			return nil, err
		}
		f.rc, f.at = rc, 0
	}
	if _, err := io.CopyN(io.Discard, f.rc, off-f.at); err != nil {
		return nil, err
	}
	f.at = off + n
	return io.NopCloser(io.LimitReader(f.rc, n)), nil
}

func (f *forwardSource) Close() error {
	if f.rc != nil {
		f.rc.Close()
		f.rc = nil
	}
	return nil
}

// seedPrep opens the machine's seeds and cuts them with the default
// parameters in a goroutine of its own, while the manifest, the
// signatures and the index are fetched: most indexes use those
// parameters, and then staging has its seeds when it knows what to fetch.
type seedPrep struct {
	cancel context.CancelFunc
	opened chan struct{} // set is known; the cutting goes on
	done   chan struct{}
	set    *seedSet
	seeds  *delta.Seeds
	err    error
	// lines are what the cutting had to say, kept until a delta goes
	// ahead: a refusal, or an image without an index, says one line.
	lines []string
}

func prepareSeeds(ctx context.Context, w *writable, old *meta.Staged) *seedPrep {
	ctx, cancel := context.WithCancel(ctx)
	sp := &seedPrep{cancel: cancel, opened: make(chan struct{}), done: make(chan struct{})}
	keep := func(format string, args ...any) { sp.lines = append(sp.lines, fmt.Sprintf(format, args...)) }
	go func() {
		defer close(sp.done)
		sp.set = machineSeeds(ctx, w.disk, w.stage, old, keep)
		close(sp.opened)
		sp.seeds, sp.err = delta.IndexSeeds(ctx, sp.set.seeds, delta.DefaultParams, nil, keep)
	}()
	return sp
}

// wait returns the seeds cut with p: those cut ahead when p is the
// default, else cut again now; what the cutting said goes to logf.
func (sp *seedPrep) wait(ctx context.Context, p delta.Params, idx *delta.Index, logf func(string, ...any)) (*seedSet, *delta.Seeds, error) {
	<-sp.done
	for _, l := range sp.lines {
		logf("%s", l)
	}
	if sp.err != nil {
		return sp.set, nil, sp.err
	}
	if p == delta.DefaultParams {
		return sp.set, sp.seeds, nil
	}
	s, err := delta.IndexSeeds(ctx, sp.set.seeds, p, idx, logf)
	return sp.set, s, err
}

// stop ends the cutting if it still runs, and closes the seeds unless
// they were handed on (keep).
func (sp *seedPrep) stop(keep bool) {
	sp.cancel()
	<-sp.done
	if !keep && sp.set != nil {
		sp.set.Close()
	}
}

// planDelta prepares img's indexed layer to be staged as a delta, from the
// seeds sp cuts. It returns nil and why not when the image has no usable
// index. The seed set it returns is the caller's to close.
func (o *Options) planDelta(ctx context.Context, src *Source, img *image, sp *seedPrep) (*deltaLayer, *seedSet, string, error) {
	// A machine with nothing to start from (a new disk, an ESP that
	// cannot be read) reads the image whole: its index is not even read.
	// Else the index is read while the seeds are cut.
	if <-sp.opened; len(sp.set.seeds) == 0 {
		sp.stop(false)
		return nil, nil, "this machine holds nothing to start a delta from (no slot files, no staged payload)", nil
	}
	idx, i, why, err := img.findIndex(src)
	if err != nil || idx == nil {
		sp.stop(false)
		return nil, nil, why, err
	}
	seeds, s, err := sp.wait(ctx, idx.Params, idx, o.Logf)
	sp.stop(true)
	if err != nil {
		seeds.Close()
		return nil, nil, "", err
	}
	rs, err := o.rangeSource(ctx, src, img, i)
	if err != nil {
		seeds.Close()
		return nil, nil, fmt.Sprintf("its blob cannot be read in ranges (%v)", err), nil
	}
	if c, ok := rs.(io.Closer); ok {
		seeds.closers = append(seeds.closers, c)
	}
	plan := delta.NewPlan(idx, s)
	if plan.Fetched == idx.Size {
		// Ranges of all of it would only cost a hash of every chunk more.
		seeds.Close()
		return nil, nil, "none of its chunks is on this machine", nil
	}
	dl := &deltaLayer{plan: plan, src: rs}
	ls := &img.layers[i]
	// The Reader checks the rebuilt blob's SHA-256 against the index's,
	// which findIndex found to be the layer's digest, on its own goroutine
	// (and each chunk on its way): hashing it here again would prove
	// nothing more. A blob that differs fails the Reader, and the delta is
	// given up.
	ls.verified = true
	ls.delta = dl
	ls.open = func() (io.ReadCloser, error) {
		dl.reader = delta.NewReader(ctx, dl.plan, dl.src, o.Logf)
		return deltaReadCloser{dl.reader}, nil
	}
	return dl, seeds, "", nil
}

// Preview is what staging an image would read, and from where, without
// writing anything: Stage's delta plan.
type Preview struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
	// Total is the bytes of the image's blobs, Fetch those staging would
	// read from its source, in Ranges requests for the delta's layer.
	Total  int64 `json:"total"`
	Fetch  int64 `json:"fetch"`
	Ranges int   `json:"ranges,omitempty"`
	// Seeds are the bytes each of the machine's files would give.
	Seeds []SeedBytes `json:"seeds,omitempty"`
	// Full says why the whole image would be read ("" for a delta).
	Full string `json:"full,omitempty"`
	// AlreadyStaged: the image is staged already, and staging it would
	// fetch nothing.
	AlreadyStaged bool `json:"already_staged,omitempty"`
}

// SeedBytes is what one of the machine's files gives a delta.
type SeedBytes struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

// Plan resolves o.Image, checks its signatures, the phase and the
// rollbacks as Stage does, and says what staging it would read from its
// source and what it would copy from the machine's own bytes. It reads the
// disk and writes nothing; the source's answer to a Range request is not
// tried.
func Plan(ctx context.Context, o Options) (*Preview, error) {
	o.defaults()
	src, reqs, err := o.source()
	if err != nil {
		return nil, err
	}
	store, d, err := disk.OpenMETA(ctx, o.Disk, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	stage, err := d.Find(disk.LabelSTAGE)
	if err != nil {
		return nil, err
	}
	slots, err := store.Block().Slots()
	if err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}
	if err := checkPhase(slots); err != nil {
		return nil, err
	}
	old, _, err := store.Block().Staged()
	if err != nil {
		old = nil
	}
	img, _, err := o.pull(ctx, src, reqs)
	if err != nil {
		return nil, err
	}
	p := &Preview{Image: src.String(), Digest: img.digest.String(), Total: img.total, Fetch: img.total}
	if old != nil && old.Digest == p.Digest {
		p.Fetch, p.AlreadyStaged = 0, true
		return p, nil
	}
	if rb := rolledBack(slots, p.Digest); rb != nil && !o.Retry {
		return nil, rb
	}
	if o.NoDelta {
		p.Full = "asked to (--no-delta)"
		return p, nil
	}
	dl, seeds, why, err := o.planDelta(ctx, src, img, prepareSeeds(ctx, &writable{disk: d, stage: stage}, old))
	if err != nil {
		return nil, err
	}
	if dl == nil {
		p.Full = why
		return p, nil
	}
	defer seeds.Close()
	pl := dl.plan
	p.Fetch, p.Ranges = img.total-pl.Index.Size+pl.Fetched, len(pl.Fetch)
	for i, n := range pl.Reused {
		if n > 0 {
			p.Seeds = append(p.Seeds, SeedBytes{Name: pl.SeedName(i), Bytes: n})
		}
	}
	return p, nil
}
