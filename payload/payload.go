package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/stagehand-dev/stagehand/meta"
)

// Layout constants.
const (
	HeaderSize = 4096
	Align      = 4096
	magic      = "STGPAYL1"
	fixed      = 8 + 4 + 32
)

// Names of the artifacts of an installer image.
const (
	Kernel    = "vmlinuz"
	Initramfs = "initramfs.xz"
	UKI       = "vmlinuz.efi" // a unified kernel image, instead of Kernel and Initramfs
	Cmdline   = "cmdline"
	Version   = "version"
)

// ErrNoHeader is returned by Unmarshal for a half that holds no payload.
var ErrNoHeader = errors.New("no payload header")

// Header describes the payload held in one half.
type Header struct {
	Image     string          `json:"image"`
	Digest    string          `json:"digest"`
	Artifacts []meta.Artifact `json:"artifacts"`
}

// Marshal encodes h as a HeaderSize block.
func (h *Header) Marshal() ([]byte, error) {
	m, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encoding payload header: %w", err)
	}
	if fixed+len(m) > HeaderSize {
		return nil, fmt.Errorf("payload header is %d bytes, more than %d", fixed+len(m), HeaderSize)
	}
	buf := make([]byte, HeaderSize)
	copy(buf, magic)
	binary.BigEndian.PutUint32(buf[8:], uint32(len(m)))
	sum := sha256.Sum256(m)
	copy(buf[12:], sum[:])
	copy(buf[fixed:], m)
	return buf, nil
}

// Unmarshal decodes a header block; the result does not alias buf.
func Unmarshal(buf []byte) (*Header, error) {
	if len(buf) < HeaderSize {
		return nil, fmt.Errorf("payload header is %d bytes, want %d", len(buf), HeaderSize)
	}
	if string(buf[:8]) != magic {
		return nil, ErrNoHeader
	}
	n := binary.BigEndian.Uint32(buf[8:])
	if n > HeaderSize-fixed {
		return nil, fmt.Errorf("payload header: manifest length %d exceeds %d", n, HeaderSize-fixed)
	}
	m := buf[fixed : fixed+int(n)]
	if sum := sha256.Sum256(m); !bytes.Equal(sum[:], buf[12:44]) {
		return nil, errors.New("payload header: manifest checksum mismatch")
	}
	var h Header
	if err := json.Unmarshal(m, &h); err != nil {
		return nil, fmt.Errorf("payload header: %w", err)
	}
	return &h, nil
}

// HalfSize is the size of each half of a STAGE partition of stageSize bytes.
func HalfSize(stageSize int64) int64 { return stageSize / 2 / Align * Align }

// Capacity is the most artifact bytes one half can hold (ignoring alignment).
func Capacity(stageSize int64) int64 { return HalfSize(stageSize) - HeaderSize }

// HalfOf tells which half of STAGE an artifact list lies in, from its first
// artifact.
func HalfOf(arts []meta.Artifact, stageSize int64) int {
	if len(arts) == 0 || arts[0].Offset < HalfSize(stageSize) {
		return 0
	}
	return 1
}

// Extent is the byte range [Start, End) of STAGE that arts (and their
// half's header) occupy.
func Extent(arts []meta.Artifact, stageSize int64) (start, end int64) {
	start = int64(HalfOf(arts, stageSize)) * HalfSize(stageSize)
	end = start + HeaderSize
	for _, a := range arts {
		end = max(end, a.Offset+a.Size)
	}
	return start, end
}

// AlignUp rounds n up to the next multiple of Align.
func AlignUp(n int64) int64 { return (n + Align - 1) / Align * Align }

// Find returns the artifact called name.
func Find(arts []meta.Artifact, name string) (meta.Artifact, bool) {
	for _, a := range arts {
		if a.Name == name {
			return a, true
		}
	}
	return meta.Artifact{}, false
}

// VerifyError says which artifact does not match META, and how.
type VerifyError struct {
	Artifact string
	Reason   string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("staged artifact %s: %s", e.Artifact, e.Reason)
}

// Verify reads every artifact from stage (the STAGE partition) and checks
// its SHA-256 against the one META recorded.
func Verify(stage io.ReaderAt, stageSize int64, arts []meta.Artifact) error {
	buf := make([]byte, 1<<20)
	for _, a := range arts {
		if a.Offset < HeaderSize || a.Offset+a.Size > stageSize {
			return &VerifyError{a.Name, fmt.Sprintf("bytes [%d, %d) lie outside STAGE (%d bytes)", a.Offset, a.Offset+a.Size, stageSize)}
		}
		h := sha256.New()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(stage, a.Offset, a.Size), buf); err != nil {
			return fmt.Errorf("reading staged artifact %s: %w", a.Name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 {
			return &VerifyError{a.Name, fmt.Sprintf("sha256 is %s, META recorded %s", got, a.SHA256)}
		}
	}
	return nil
}
