package delta

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// HTTPSource reads ranges of a blob over HTTP, one single-range GET each
// (the distribution spec: a registry SHOULD support Range on blob GETs).
// Client carries the registry's authentication.
type HTTPSource struct {
	Client *http.Client
	URL    string // the blob's URL, e.g. https://REGISTRY/v2/REPO/blobs/sha256:...
	Size   int64  // the blob's size, to check Content-Range
}

// OpenRange implements Source. A 200 (the whole blob: the server ignores
// Range) and a 416 fail with ErrNoRange.
func (s *HTTPSource) OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n <= 0 || off+n > s.Size {
		return nil, fmt.Errorf("range [%d, %d) is outside the blob's %d bytes", off, off+n, s.Size)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := s.Client.Do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: the server answered a Range request with the whole blob (200)", ErrNoRange)
	case http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: the server refused the range (416)", ErrNoRange)
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("GET with Range: %s", resp.Status)
	}
	if err := checkContentRange(resp.Header.Get("Content-Range"), off, n, s.Size); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %v", ErrNoRange, err)
	}
	return resp.Body, nil
}

// checkContentRange checks a 206's Content-Range: "bytes FIRST-LAST/SIZE"
// for exactly the range asked (RFC 9110, 14.4); SIZE may be "*".
func checkContentRange(v string, off, n, size int64) error {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return fmt.Errorf("a 206 with Content-Range %q, not bytes", v)
	}
	rng, total, ok := strings.Cut(rest, "/")
	first, last, ok2 := strings.Cut(rng, "-")
	if !ok || !ok2 {
		return fmt.Errorf("a 206 with a malformed Content-Range %q", v)
	}
	f, err1 := strconv.ParseInt(first, 10, 64)
	l, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || f != off || l != off+n-1 {
		return fmt.Errorf("a 206 for %q where bytes %d-%d were asked", rng, off, off+n-1)
	}
	if total != "*" {
		if t, err := strconv.ParseInt(total, 10, 64); err != nil || t != size {
			return fmt.Errorf("a 206 for a blob of %s bytes, where it has %d", total, size)
		}
	}
	return nil
}

// ReaderAtSource reads ranges of a blob held in a local file.
type ReaderAtSource struct {
	R    io.ReaderAt
	Size int64
}

// OpenRange implements Source.
func (s *ReaderAtSource) OpenRange(_ context.Context, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n <= 0 || off+n > s.Size {
		return nil, fmt.Errorf("range [%d, %d) is outside the blob's %d bytes", off, off+n, s.Size)
	}
	return io.NopCloser(io.NewSectionReader(s.R, off, n)), nil
}
