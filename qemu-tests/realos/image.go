package realos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// BaseScript builds the Debian tree (relative to the repository).
const BaseScript = "scripts/realos-base.sh"

// squashfsArgs are mksquashfs's options for the root image: zstd (small,
// and decompressed fast enough under TCG), owners and modes as built, no
// extended attributes (the tree carries ACLs mksquashfs does not know).
var squashfsArgs = []string{"-comp", "zstd", "-no-xattrs", "-noappend", "-quiet"}

// aptSources are the files whose content names the mirror the tree comes
// from: a change of mirror rebuilds the image.
var aptSources = []string{"/etc/apt/sources.list", "/etc/apt/sources.list.d"}

// Image is a built root image.
type Image struct {
	Path  string        // the squashfs
	Key   string        // the hash of its inputs
	Built bool          // built now (false: taken from the cache)
	Took  time.Duration // the build, or the cache look-up
}

// CacheDir is where images are kept unless STAGEHAND_REALOS_CACHE says
// otherwise: build/realos under the repository.
func CacheDir(root string) string {
	if d := os.Getenv("STAGEHAND_REALOS_CACHE"); d != "" {
		return d
	}
	return filepath.Join(root, "build", "realos")
}

// Key hashes the inputs of the root image: the base script (which holds the
// package list and the suite), the mksquashfs options and the APT sources.
// Debian's bookworm moves with its point releases; the key does not see
// that (no snapshot mirror is reachable here).
func Key(root string, pins ...string) (string, error) {
	h := sha256.New()
	if len(pins) > 0 {
		fmt.Fprintf(h, "pins %s\n", strings.Join(pins, ","))
	}
	b, err := os.ReadFile(filepath.Join(root, BaseScript))
	if err != nil {
		return "", fmt.Errorf("reading the image's inputs: %w", err)
	}
	fmt.Fprintf(h, "script %d\n%s\nmksquashfs %s\n", len(b), b, strings.Join(squashfsArgs, " "))
	var files []string
	for _, s := range aptSources {
		fi, err := os.Stat(s)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return "", err
		case fi.IsDir():
			m, _ := filepath.Glob(filepath.Join(s, "*"))
			files = append(files, m...)
		default:
			files = append(files, s)
		}
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("reading the image's inputs: %w", err)
		}
		fmt.Fprintf(h, "source %s %d\n%s\n", f, len(b), b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Build returns the root image of the repository at root, from the cache
// when its key is there, else built with BaseScript (mmdebstrap) and
// mksquashfs and then kept; other images in the cache are removed. Builds
// are serialized by a lock in the cache directory. logf says what it does.
func Build(ctx context.Context, root string, logf func(string, ...any)) (*Image, error) {
	return BuildPinned(ctx, root, nil, logf)
}

// BuildPinned is Build with packages at given versions ("pkg=version"),
// for an image one package older than Build's (make bench's delta
// figures). A pinned image is kept beside Build's, and removed with the
// others when Build's is rebuilt.
func BuildPinned(ctx context.Context, root string, pins []string, logf func(string, ...any)) (*Image, error) {
	start := time.Now()
	key, err := Key(root, pins...)
	if err != nil {
		return nil, err
	}
	dir := CacheDir(root)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	for {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	img := &Image{Path: filepath.Join(dir, "root-"+key+".sfs"), Key: key}
	if _, err := os.Stat(img.Path); err == nil {
		img.Took = time.Since(start)
		return img, nil
	}
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("building the real OS image: %s is missing: run 'make deps' as root", tool)
		}
	}
	tree := filepath.Join(dir, "tree-"+key)
	defer os.RemoveAll(tree)
	logf("realos: building the root image %s (mmdebstrap, then mksquashfs)", key)
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, BaseScript), tree)
	cmd.Env = append(os.Environ(), "REALOS_PINS="+strings.Join(pins, ","))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: %v\n%s", BaseScript, err, out)
	} else {
		logf("%s", strings.TrimSpace(string(out)))
	}
	tmp := img.Path + ".tmp"
	defer os.Remove(tmp)
	args := append([]string{tree, tmp}, squashfsArgs...)
	if out, err := exec.CommandContext(ctx, "mksquashfs", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mksquashfs: %v\n%s", err, out)
	}
	if err := syncFile(tmp); err != nil {
		return nil, err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "root-*.sfs"))
	if err := os.Rename(tmp, img.Path); err != nil {
		return nil, err
	}
	if err := syncFile(dir); err != nil {
		return nil, err
	}
	for _, o := range old {
		if len(pins) == 0 {
			os.Remove(o)
		}
	}
	img.Built, img.Took = true, time.Since(start)
	fi, err := os.Stat(img.Path)
	if err != nil {
		return nil, err
	}
	logf("realos: root image %s: %.1f MiB in %s", img.Path, float64(fi.Size())/(1<<20), img.Took.Round(100*time.Millisecond))
	return img, nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", p, err)
	}
	return nil
}
