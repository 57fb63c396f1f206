package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/stagehand-dev/stagehand/disk/disktest"
	"github.com/stagehand-dev/stagehand/meta"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := &Header{Image: "127.0.0.1:5000/os:v2", Digest: "sha256:" + strings.Repeat("ab", 32), Artifacts: []meta.Artifact{
		{Name: Kernel, Offset: 4096, Size: 100, SHA256: strings.Repeat("0", 64)},
		{Name: Initramfs, Offset: 8192, Size: 5, SHA256: strings.Repeat("1", 64)},
	}}
	buf, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(buf) != HeaderSize || string(buf[:8]) != "STGPAYL1" {
		t.Fatalf("header %d bytes, magic %q", len(buf), buf[:8])
	}
	got, err := Unmarshal(buf)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h, got); diff != "" {
		t.Errorf("(-want, +got):\n%s", diff)
	}
	if _, err := Unmarshal(make([]byte, HeaderSize)); !errors.Is(err, ErrNoHeader) {
		t.Errorf("zeros: %v, want ErrNoHeader", err)
	}
	buf[50] ^= 1
	if _, err := Unmarshal(buf); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("flipped manifest byte: %v", err)
	}
	big := &Header{Image: strings.Repeat("x", HeaderSize)}
	if _, err := big.Marshal(); err == nil {
		t.Error("oversized header marshalled")
	}
}

func TestHalves(t *testing.T) {
	const stage = 32 << 20
	if HalfSize(stage) != 16<<20 || Capacity(stage) != 16<<20-4096 || HalfSize(stage+4097) != 16<<20 {
		t.Errorf("HalfSize %d Capacity %d", HalfSize(stage), Capacity(stage))
	}
	arts := []meta.Artifact{{Offset: 16<<20 + 4096, Size: 10}, {Offset: 16<<20 + 8192, Size: 5000}}
	if HalfOf(arts, stage) != 1 || HalfOf(nil, stage) != 0 {
		t.Error("HalfOf")
	}
	if s, e := Extent(arts, stage); s != 16<<20 || e != 16<<20+8192+5000 {
		t.Errorf("Extent = %d, %d", s, e)
	}
	if AlignUp(1) != 4096 || AlignUp(4096) != 4096 || AlignUp(0) != 0 {
		t.Error("AlignUp")
	}
}

func TestVerify(t *testing.T) {
	img := make([]byte, 1<<20)
	data := []byte("the kernel")
	copy(img[8192:], data)
	sum := sha256.Sum256(data)
	arts := []meta.Artifact{{Name: Kernel, Offset: 8192, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}}
	dev := disktest.NewMem(img)
	if err := Verify(dev, int64(len(img)), arts); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(img)
	bad[8193] ^= 1
	var ve *VerifyError
	if err := Verify(disktest.NewMem(bad), int64(len(img)), arts); !errors.As(err, &ve) || ve.Artifact != Kernel {
		t.Errorf("corrupt artifact: %v", err)
	}
	out := []meta.Artifact{{Name: Kernel, Offset: 1<<20 - 2, Size: 10}}
	if err := Verify(dev, int64(len(img)), out); !errors.As(err, &ve) || !strings.Contains(err.Error(), "outside STAGE") {
		t.Errorf("artifact past the end: %v", err)
	}
}

func FuzzUnmarshal(f *testing.F) {
	h := &Header{Image: "r", Digest: "sha256:00", Artifacts: []meta.Artifact{{Name: Kernel, Offset: 4096, Size: 1, SHA256: "00"}}}
	buf, _ := h.Marshal()
	f.Add(buf[:200])
	f.Fuzz(func(t *testing.T, data []byte) {
		buf := make([]byte, HeaderSize)
		copy(buf, data)
		h, err := Unmarshal(buf)
		if err != nil {
			return
		}
		again, err := h.Marshal()
		if err != nil {
			return // a JSON encoding of different length may not fit; fine
		}
		if _, err := Unmarshal(again); err != nil {
			t.Fatalf("re-encoded header does not decode: %v", err)
		}
	})
}
