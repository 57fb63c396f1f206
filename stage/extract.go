package stage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/stagehand-dev/stagehand/delta"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// writebackChunk is how much is written before the kernel is asked to start
// writing it out, so that the final sync has little left to do.
const writebackChunk = 16 << 20

// ErrTooLarge marks a payload or artifact over a limit.
var ErrTooLarge = errors.New("too large")

// extractor streams layers and writes the wanted artifacts into one half of
// STAGE, hashing as it goes.
type extractor struct {
	ctx         context.Context
	dst         sink               // the STAGE partition, or a file
	direct      *disk.DirectWriter // the same, without the page cache; nil where unsupported
	next, end   int64              // next free offset, end of the half
	high        int64              // highest offset written
	half        int64              // size of a half, for messages
	maxArtifact int64
	maxUnpacked int64 // bytes of uncompressed tar, over all layers
	unpacked    int64
	want        map[string]string // tar path → artifact name
	found       map[string]meta.Artifact
	install     map[string]bool // paths seen under usr/install, for messages
	progress    func(n int64)
	buf         []byte
	// spare is a second buffer like buf for direct writes: one is written
	// while the next is read and hashed (a direct write returns only once
	// the device has the bytes). nil: each write waits.
	spare []byte
	// fetched counts the bytes read from the image's source, reused those
	// a delta copied from the machine's own, over the layers done; live is
	// the delta being read, whose counts are not in them yet.
	fetched, reused int64
	live            *delta.Reader
}

// sink is where the artifacts go: the STAGE partition (a *disk.Region), or
// a plain file for Fetch.
type sink interface {
	io.WriterAt
	Sync() error
	StartWriteback(off, n int64)
}

// countingHash counts and hashes what passes through it, and reports
// progress.
type countingHash struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	progress func(int64)
}

func (c *countingHash) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		if c.h != nil {
			c.h.Write(p[:n])
		}
		c.n += int64(n)
		if c.progress != nil {
			c.progress(int64(n))
		}
	}
	return n, err
}

// noReadAhead is a reader read as it is.
type noReadAhead struct{ io.Reader }

func (noReadAhead) Close() {}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// layer streams one layer, writes the artifacts it holds and verifies the
// whole blob (a delta's Reader verifies its own).
func (x *extractor) layer(ls layerSource, n int) error {
	raw, err := ls.open()
	if err != nil {
		return fmt.Errorf("layer %d (%s): %w", n, ls.diffID, err)
	}
	defer raw.Close()
	if ls.delta != nil {
		x.live = ls.delta.reader
		defer func() { x.live = nil }()
	}
	// The blob is read, counted and (unless the transport or a delta's
	// Reader verifies it) hashed in a goroutine of its own; the tar is
	// parsed and the artifacts hashed and written here.
	blob := &countingHash{r: raw, progress: x.progress}
	if ls.digest != nil && !ls.verified {
		blob.h = sha256.New()
	}
	// A delta's Reader reads ahead, a MiB at a time, on a goroutine of
	// its own already.
	var ra interface {
		io.Reader
		Close()
	} = noReadAhead{blob}
	if ls.delta == nil {
		ra = newReadAhead(blob, 4, 1<<20)
	}
	defer ra.Close()
	br := bufio.NewReaderSize(ra, 64<<10)
	var stream io.Reader = br
	if ls.compressed {
		magic, _ := br.Peek(4)
		switch {
		case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
			zr, err := gzip.NewReader(br)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", n, ls.diffID, err)
			}
			defer zr.Close()
			stream = zr
		case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", n, ls.diffID, err)
			}
			defer zr.Close()
			stream = zr
		}
	}
	// An uncompressed blob is its own tar: its digest is the diff ID, and
	// hashing it twice would prove nothing more.
	tarStream := &countingHash{r: stream}
	if ls.digest == nil || *ls.digest != ls.diffID || stream != io.Reader(br) {
		tarStream.h = sha256.New()
	}
	tr := tar.NewReader(x.limit(tarStream))
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return x.readError(ls, n, err)
		}
		if err := x.entry(h, tr); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) {
				return x.readError(ls, n, err)
			}
			return err
		}
	}
	// The bytes after the tar's end count too: drain to the end of the blob.
	if _, err := io.CopyBuffer(io.Discard, x.limit(tarStream), x.buf); err != nil {
		return x.readError(ls, n, err)
	}
	if _, err := io.CopyBuffer(io.Discard, br, x.buf); err != nil {
		return x.readError(ls, n, err)
	}
	ra.Close() // the reader is done: its counts and hash are final
	if d := ls.delta; d != nil && d.reader != nil {
		x.fetched += d.reader.Stats().Fetched
		x.reused += d.reader.Stats().Reused
		x.live = nil
	} else {
		x.fetched += blob.n
	}
	if ls.size >= 0 && blob.n != ls.size {
		return fmt.Errorf("layer %d (%s) is %d bytes, the manifest says %d: truncated or corrupt blob", n, *ls.digest, blob.n, ls.size)
	}
	// A delta's blob is checked chunk by chunk as it is read (delta.Reader);
	// one that is compressed and does not unpack to the config's diff ID
	// gives the delta up here.
	mismatch := func(err error) error {
		if ls.delta != nil {
			return &deltaError{err}
		}
		return err
	}
	if blob.h != nil {
		if got := digestOf(blob.h); got != ls.digest.String() {
			return mismatch(fmt.Errorf("layer %d: digest is %s, the manifest says %s: corrupt or tampered blob", n, got, ls.digest))
		}
	}
	if tarStream.h != nil {
		if got := digestOf(tarStream.h); got != ls.diffID.String() {
			return mismatch(fmt.Errorf("layer %d: uncompressed digest is %s, the config says %s: corrupt or tampered blob", n, got, ls.diffID))
		}
	}
	return nil
}

func (x *extractor) readError(ls layerSource, n int, err error) error {
	what := ls.diffID.String()
	if ls.digest != nil {
		what = ls.digest.String()
	}
	if errors.Is(err, ErrTooLarge) {
		return err
	}
	return fmt.Errorf("layer %d (%s) is truncated or corrupt: %w", n, what, err)
}

// limit caps the uncompressed bytes read, over all layers.
func (x *extractor) limit(r io.Reader) io.Reader { return &unpackLimit{r: r, x: x} }

type unpackLimit struct {
	r io.Reader
	x *extractor
}

func (u *unpackLimit) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	u.x.unpacked += int64(n)
	if u.x.unpacked > u.x.maxUnpacked {
		return n, fmt.Errorf("%w: the layers unpack to more than %d bytes (a decompression bomb?)", ErrTooLarge, u.x.maxUnpacked)
	}
	return n, err
}

// entry handles one tar entry: refuse it, skip it, drop a whited-out
// artifact, or write an artifact.
func (x *extractor) entry(h *tar.Header, r io.Reader) error {
	name, err := CleanEntry(h)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	if strings.HasPrefix(base, ".wh.") {
		x.whiteout(path.Clean(dir), strings.TrimPrefix(base, ".wh."))
		return nil
	}
	if strings.HasPrefix(name, "usr/install/") && h.Typeflag != tar.TypeDir {
		x.install["/"+name] = true
	}
	art, ok := x.want[name]
	if !ok {
		return nil
	}
	if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
		what := "not a regular file"
		switch h.Typeflag {
		case tar.TypeSymlink:
			what = fmt.Sprintf("a symlink to %q", h.Linkname)
		case tar.TypeLink:
			what = fmt.Sprintf("a hard link to %q", h.Linkname)
		}
		return &EntryError{h.Name, fmt.Sprintf("the %s artifact is %s; artifacts must be regular files", art, what)}
	}
	if h.Size > x.maxArtifact {
		return fmt.Errorf("%w: artifact %s is %d bytes, more than the limit of %d", ErrTooLarge, art, h.Size, x.maxArtifact)
	}
	if x.next+h.Size > x.end {
		need := x.next + h.Size - (x.end - x.half) - payload.HeaderSize
		return fmt.Errorf("%w: the payload needs at least %d bytes, and half of STAGE holds %d (STAGE must be at least twice the payload)", ErrTooLarge, need, x.half-payload.HeaderSize)
	}
	sum := sha256.New()
	var got, queued int64
	// The direct write in flight, if any: its buffer is not touched, and
	// entry does not return, until it is done.
	var inflight chan error
	wait := func() error {
		if inflight == nil {
			return nil
		}
		err := <-inflight
		inflight = nil
		return err
	}
	defer wait()
	for got < h.Size {
		buf := x.buf
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), h.Size-got)])
		if k > 0 {
			sum.Write(buf[:k])
			werr := wait()
			if werr == nil && x.direct != nil && x.spare != nil {
				inflight = make(chan error, 1)
				go func(off int64) { inflight <- x.writeChunk(buf, k, off) }(x.next + got)
				x.buf, x.spare = x.spare, x.buf
			} else if werr == nil {
				werr = x.writeChunk(buf, k, x.next+got)
			}
			if werr != nil {
				return fmt.Errorf("writing artifact %s to STAGE: %w", art, werr)
			}
			got += int64(k)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("artifact %s: %w", art, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("artifact %s: %w", art, err)
		}
		if x.direct == nil && got-queued >= writebackChunk {
			x.dst.StartWriteback(x.next+queued, got-queued)
			queued = got
		}
	}
	if err := wait(); err != nil {
		return fmt.Errorf("writing artifact %s to STAGE: %w", art, err)
	}
	x.found[art] = meta.Artifact{Name: art, Offset: x.next, Size: h.Size, SHA256: hex.EncodeToString(sum.Sum(nil))}
	x.next = payload.AlignUp(x.next + h.Size)
	return nil
}

// writeChunk writes buf[:k] at off: directly when it can, padding the
// last chunk of an artifact with zeros to the alignment (the space up to the
// next artifact is the artifact's), else through the page cache.
func (x *extractor) writeChunk(buf []byte, k int, off int64) error {
	if x.direct != nil {
		n := int(payload.AlignUp(int64(k)))
		clear(buf[k:n])
		x.high = max(x.high, off+int64(n))
		_, err := x.direct.WriteAt(buf[:n], off)
		return err
	}
	x.high = max(x.high, off+int64(k))
	_, err := x.dst.WriteAt(buf[:k], off)
	return err
}

// whiteout applies an OCI whiteout of base in dir (".wh..wh..opq" hides
// the whole directory) to the artifacts found so far.
func (x *extractor) whiteout(dir, base string) {
	for p, art := range x.want {
		if (base == ".wh..opq" && strings.HasPrefix(p, dir+"/")) || p == path.Join(dir, base) || strings.HasPrefix(p, path.Join(dir, base)+"/") {
			delete(x.found, art)
		}
	}
	for p := range x.install {
		if (base == ".wh..opq" && strings.HasPrefix(p, "/"+dir+"/")) || p == "/"+path.Join(dir, base) {
			delete(x.install, p)
		}
	}
}

// artifacts returns what was found, in a fixed order, or says what is missing.
func (x *extractor) artifacts(arch string) ([]meta.Artifact, error) {
	if missing := installer.Missing(func(n string) bool { _, ok := x.found[n]; return ok }); len(missing) > 0 {
		var seen []string
		for p := range x.install {
			seen = append(seen, p)
		}
		sort.Strings(seen)
		has := "nothing"
		if len(seen) > 0 {
			has = strings.Join(seen, ", ")
		}
		return nil, fmt.Errorf("not an installer image for %s: no /usr/install/%s/%s (it needs a kernel and an initramfs, or a UKI at /usr/install/%s/%s; under /usr/install it has %s)",
			arch, arch, missing[0], arch, payload.UKI, has)
	}
	var out []meta.Artifact
	for _, a := range x.found {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out, nil
}
