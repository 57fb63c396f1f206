package stage

import (
	"github.com/stagehand-dev/stagehand/internal/bytesize"

	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
	"github.com/stagehand-dev/stagehand/sign"
)

// Defaults for the limits of Options.
const (
	DefaultMaxArtifact = 2 << 30
	DefaultMaxUnpacked = 16 << 30
)

// Options says what to stage where.
type Options struct {
	Disk     string         // image file or block device
	Image    string         // the reference, see ParseSource
	Insecure bool           // plain HTTP to the registry
	Platform *v1.Platform   // default: this machine's
	Keychain authn.Keychain // default: the Docker config
	// VerifyKeys, when set, require a cosign signature of the image by one
	// of them; Policy may require one for given registries and
	// repositories (nil: no policy). Signatures are checked once the
	// manifest is read, before anything is written; an image from a local
	// source cannot carry one and is refused (ErrUnverifiable).
	VerifyKeys  []crypto.PublicKey
	Policy      *sign.Policy
	MaxArtifact int64 // largest artifact accepted (default DefaultMaxArtifact)
	MaxUnpacked int64 // most uncompressed bytes read (default DefaultMaxUnpacked)
	// Retry stages an image even if its digest rolled back on this
	// machine before (else ErrRolledBack); the staged transition says so.
	Retry bool
	// Firmware, when it enforces Secure Boot, is checked to trust the
	// payload's UKI (else its kernel) before it counts as staged (else
	// ErrUntrusted); AllowUntrusted stages it anyway, never to be
	// kexec'd. nil: not checked, and prestage sends the trial through
	// the firmware under Secure Boot.
	Firmware       *Firmware
	AllowUntrusted bool
	// NoDelta reads every blob whole, even when the image carries a delta
	// index (see package delta): by default only the chunks the machine
	// does not hold already are read.
	NoDelta bool
	// Progress is told the bytes read so far and the total (-1 when unknown).
	Progress func(done, total int64)
	// Transfer, during a delta, is told how many of those bytes were
	// fetched from the source and how many copied from the machine's own;
	// it is called just before Progress.
	Transfer func(fetched, reused int64)
	Logf     func(format string, args ...any) // default: discard
	Now      func() time.Time                 // default: time.Now
}

// Result says what was staged.
type Result struct {
	Staged        *meta.Staged
	AlreadyStaged bool  // the same digest was staged already: nothing written
	Bytes         int64 // artifact bytes written
	Half          int   // half of STAGE written
}

// maxFull bounds the reason META keeps for a delta given up.
const maxFull = 200

// ErrBusy marks a META whose state does not allow staging now.
var ErrBusy = errors.New("cannot stage now")

// Stage pulls o.Image and stages it on o.Disk for the next boot. The
// previous staged payload stays intact until the new one is durable and
// recorded in META; on any failure META is unchanged and the bytes written to
// the free half are zeroed again. An image whose digest rolled back on this
// machine is refused before anything is written (ErrRolledBack, as a
// *RolledBackError), unless o.Retry.
//
// When the image carries a delta index, the chunks of its layer that the
// machine holds already (in its slots' files, in the payload STAGE holds)
// are copied from there, their hashes checked, and only the others are
// read from the source; a source that cannot serve ranges, or any other
// failure of that part, stages the image again from whole blobs, with a
// line to o.Logf saying why.
func Stage(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	res, err := stageOnce(ctx, o, "")
	var de *deltaError
	if errors.As(err, &de) && ctx.Err() == nil {
		why := fmt.Sprintf("the delta failed (%v)", de.err)
		o.Logf("delta: %s: pulling the whole image", why)
		o.NoDelta = true
		return stageOnce(ctx, o, why)
	}
	return res, err
}

// stageOnce is Stage, with a delta unless o.NoDelta; full says why a delta
// was given up before.
func stageOnce(ctx context.Context, o Options, full string) (*Result, error) {
	src, reqs, err := o.source()
	if err != nil {
		return nil, err
	}
	w, err := openForWrite(ctx, o.Disk)
	if err != nil {
		return nil, err
	}
	defer w.disk.Close()
	store, stage, b, slots := w.store, w.stage, w.block, w.slots
	if err := checkPhase(slots); err != nil {
		return nil, err
	}
	old, _, err := b.Staged()
	if err != nil {
		o.Logf("ignoring a damaged staged record: %v", err)
		old = nil
	}

	// The seeds are cut while the manifest, the signatures and the index
	// are read; planDelta takes them, or stops the cutting.
	var seeds *seedPrep
	if !o.NoDelta {
		seeds = prepareSeeds(ctx, w, old)
		defer func() {
			if seeds != nil {
				seeds.stop(false)
			}
		}()
	}
	img, signedBy, err := o.pull(ctx, src, reqs)
	if err != nil {
		return nil, err
	}
	digest := img.digest.String()
	if old != nil && old.Digest == digest {
		if signedBy != "" && old.SignedBy != signedBy {
			// Staged before without this verification: record it.
			old.SignedBy = signedBy
			if err := store.Update(func(b *meta.Block) error { return b.SetStaged(old) }); err != nil {
				return nil, err
			}
		}
		return &Result{Staged: old, AlreadyStaged: true, Half: payload.HalfOf(old.Artifacts, stage.Size)}, nil
	}
	reason := "staged " + src.String() + " " + digest
	if rb := rolledBack(slots, digest); rb != nil {
		if !o.Retry {
			return nil, rb
		}
		o.Logf("image %s rolled back on this machine (%s): staging it again, as asked (retry)", digest, rb.State.Reason)
		reason += " (a retry: it rolled back on slot " + string(rb.Slot) + " before)"
	}
	target := slots.Active.Other()
	if err := checkRoom(b, slots, src.String(), digest, signedBy, target, reason); err != nil {
		return nil, fmt.Errorf("META on %s: %w", store.Name(), err)
	}

	half := 0
	if old != nil && payload.HalfOf(old.Artifacts, stage.Size) == 0 {
		half = 1
	}
	hs := payload.HalfSize(stage.Size)
	x := &extractor{
		ctx: ctx, dst: stage, half: hs,
		next: int64(half)*hs + payload.HeaderSize, end: int64(half+1) * hs,
		maxArtifact: o.MaxArtifact, maxUnpacked: o.MaxUnpacked,
		want: installer.Artifacts(o.Platform.Architecture), found: map[string]meta.Artifact{}, install: map[string]bool{},
		buf: disk.AlignedBuffer(1 << 20),
	}
	if dw, err := stage.OpenDirect(); err == nil {
		x.direct, x.spare = dw, disk.AlignedBuffer(1<<20)
		defer dw.Close()
	}
	x.high = x.next
	if o.NoDelta && full == "" {
		full = "asked to (no delta)"
	}
	if !o.NoDelta {
		sp := seeds
		seeds = nil // planDelta stops it
		dl, set, why, err := o.planDelta(ctx, src, img, sp)
		if err != nil {
			return nil, err
		}
		if set != nil {
			defer set.Close()
		}
		if dl != nil {
			p := dl.plan
			o.Logf("delta: %s of %s from this machine, %s to fetch in %d ranges", bytesize.Format(p.Index.Size-p.Fetched), bytesize.Format(p.Index.Size), bytesize.Format(p.Fetched), len(p.Fetch))
		} else {
			full = why
			o.Logf("delta: %s: pulling the whole image", why)
		}
	}
	var done int64
	x.progress = func(n int64) {
		done += n
		if x.live != nil && o.Transfer != nil {
			o.Transfer(x.fetched+x.live.Stats().Fetched, x.reused+x.live.Stats().Reused)
		}
		o.Progress(done, img.total)
	}
	arts, err := x.write(img, o.Platform.Architecture)
	if a, ok := payload.Find(arts, payload.UKI); ok && err == nil {
		if _, uerr := boot.CheckUKI(io.NewSectionReader(stage, a.Offset, a.Size), a.Size); uerr != nil {
			err = fmt.Errorf("refusing %s: /usr/install/%s/%s: %w", src, o.Platform.Architecture, payload.UKI, uerr)
		}
	}
	var fc *meta.FirmwareCheck
	if err == nil {
		if fc, err = o.Firmware.check(stage, arts, o.AllowUntrusted); err != nil {
			err = fmt.Errorf("refusing %s: %w", src, err)
		}
	}
	if err == nil {
		err = writeHeader(stage, int64(half)*hs, &payload.Header{Image: src.String(), Digest: digest, Artifacts: arts})
	}
	if err != nil {
		// Give the half back as it was: zeros, as STAGE holds nothing but
		// the payload META refers to.
		if zerr := zero(stage, int64(half)*hs, x.high); zerr != nil {
			// Not retried without a delta: STAGE is not as it was.
			var de *deltaError
			if errors.As(err, &de) {
				err = de.err
			}
			return nil, fmt.Errorf("%w (and restoring STAGE failed: %v)", err, zerr)
		}
		return nil, err
	}

	if len(full) > maxFull {
		full = strings.ToValidUTF8(full[:maxFull], "") + "…"
	}
	st := &meta.Staged{Image: src.String(), Digest: digest, Target: target, Time: o.Now().UTC(), Artifacts: arts, SignedBy: signedBy, Firmware: fc,
		Transfer: &meta.Transfer{Fetched: x.fetched, Reused: x.reused, Full: full}}
	err = store.Update(func(b *meta.Block) error {
		if err := b.SetStaged(st); err != nil {
			return err
		}
		if err := b.Set(meta.TagTalosStagedImageRef, []byte(src.String())); err != nil {
			return err
		}
		from := slots.Phase
		slots.Phase = meta.PhaseStaged
		if err := b.SetSlots(slots); err != nil {
			return err
		}
		return b.AddTransition(meta.Transition{Time: st.Time, From: from, To: meta.PhaseStaged, Slot: target, Reason: reason})
	})
	if err != nil {
		// META may hold the new record or the old one: leave STAGE be.
		return nil, err
	}
	var written int64
	for _, a := range arts {
		written += a.Size
	}
	res := &Result{Staged: st, Bytes: written, Half: half}
	if old != nil {
		start, end := payload.Extent(old.Artifacts, stage.Size)
		if err := zero(stage, start, end); err != nil {
			o.Logf("clearing the superseded payload: %v", err)
		}
	}
	return res, nil
}

// checkPhase refuses to stage while an upgrade is being applied or tried.
func checkPhase(slots *meta.Slots) error {
	switch slots.Phase {
	case meta.PhaseApplying:
		return fmt.Errorf("%w: an upgrade to slot %s is being applied; boot to finish it", ErrBusy, slots.Active.Other())
	case meta.PhaseTrial:
		return fmt.Errorf("%w: slot %s is on trial; confirm it (stager confirm) or roll back first", ErrBusy, slots.Trial)
	}
	return nil
}

// writable is a disk opened and locked for writing, with META's slot states.
type writable struct {
	disk  *disk.Disk
	store *meta.Store
	stage *disk.Region
	block *meta.Block
	slots *meta.Slots
}

func openForWrite(ctx context.Context, path string) (*writable, error) {
	store, d, err := disk.OpenMETA(ctx, path, true)
	if err != nil {
		return nil, err
	}
	w := &writable{disk: d, store: store, block: store.Block()}
	if w.stage, err = d.Find(disk.LabelSTAGE); err == nil {
		if w.slots, err = w.block.Slots(); err != nil {
			err = fmt.Errorf("META on %s: %w", store.Name(), err)
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return w, nil
}

func (o *Options) defaults() {
	if o.Platform == nil {
		o.Platform = &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	if o.MaxArtifact == 0 {
		o.MaxArtifact = DefaultMaxArtifact
	}
	if o.MaxUnpacked == 0 {
		o.MaxUnpacked = DefaultMaxUnpacked
	}
	if o.Progress == nil {
		o.Progress = func(int64, int64) {}
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	// Lines come from more than one goroutine (the seeds are cut beside
	// the pull): the caller's Logf gets them one at a time.
	logf, mu := o.Logf, new(sync.Mutex)
	o.Logf = func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logf(format, args...)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// write streams every layer, then syncs the artifacts.
func (x *extractor) write(img *image, arch string) ([]meta.Artifact, error) {
	for i, l := range img.layers {
		if err := x.layer(l, i+1); err != nil {
			return nil, err
		}
	}
	arts, err := x.artifacts(arch)
	if err != nil {
		return nil, err
	}
	if err := x.dst.Sync(); err != nil {
		return nil, fmt.Errorf("syncing STAGE: %w", err)
	}
	return arts, nil
}

func writeHeader(stage *disk.Region, at int64, h *payload.Header) error {
	buf, err := h.Marshal()
	if err != nil {
		return err
	}
	if _, err := stage.WriteAt(buf, at); err != nil {
		return fmt.Errorf("writing the payload header: %w", err)
	}
	if err := stage.Sync(); err != nil {
		return fmt.Errorf("syncing STAGE: %w", err)
	}
	return nil
}

func zero(stage *disk.Region, start, end int64) error {
	if err := stage.Zero(start, end-start); err != nil {
		return err
	}
	return stage.Sync()
}

// checkRoom refuses, before anything is written, a staged record that META
// could not hold: a record for the largest artifact list there can be.
func checkRoom(b *meta.Block, slots *meta.Slots, ref, digest, signedBy string, target meta.Slot, reason string) error {
	probe := b.Clone()
	st := &meta.Staged{Image: ref, Digest: digest, SignedBy: signedBy, Target: target, Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		Transfer: &meta.Transfer{Fetched: 1 << 62, Reused: 1 << 62, Full: strings.Repeat("<", maxFull) + "…"}} // "<" is the longest in JSON (\u003c)
	for _, name := range []string{payload.Kernel, payload.Initramfs, payload.UKI, payload.Cmdline, payload.Version} {
		st.Artifacts = append(st.Artifacts, meta.Artifact{Name: name, Offset: 1 << 60, Size: 1 << 60, SHA256: fmt.Sprintf("%064d", 0)})
	}
	if err := probe.SetStaged(st); err != nil {
		return err
	}
	if err := probe.Set(meta.TagTalosStagedImageRef, []byte(ref)); err != nil {
		return err
	}
	next := *slots
	next.Phase = meta.PhaseStaged
	if err := probe.SetSlots(&next); err != nil {
		return err
	}
	return probe.AddTransition(meta.Transition{Time: st.Time, From: meta.PhaseStaged, To: meta.PhaseStaged, Slot: target, Reason: reason})
}

// Resolve returns the digest Stage would record for o.Image on o's
// platform, reading the manifest only: no layer, no disk.
func Resolve(ctx context.Context, o Options) (string, error) {
	o.defaults()
	src, _, err := o.source()
	if err != nil {
		return "", err
	}
	img, err := src.resolve(ctx, *o.Platform, o.Keychain)
	if err != nil {
		return "", err
	}
	return img.digest.String(), nil
}
