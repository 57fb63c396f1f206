package delta

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/jotfs/fastcdc-go"
)

// BenchmarkCut: Cut against jotfs/fastcdc-go with the same sizes (its
// own gear table, so other cut points, the same work), and IndexSeeds on
// all cores, over 64 MiB of random bytes, like an initramfs.
func BenchmarkCut(b *testing.B) {
	data := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	p := DefaultParams
	b.Run("stagehand", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			Cut(bytes.NewReader(data), p, func(int64, []byte) error { return nil })
		}
	})
	b.Run("fastcdc-go", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			c, err := fastcdc.NewChunker(bytes.NewReader(data), fastcdc.Options{MinSize: int(p.Min), AverageSize: int(p.Avg), MaxSize: int(p.Max)})
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := c.Next(); err != nil {
					break
				}
			}
		}
	})
	b.Run("IndexSeeds", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			IndexSeeds(context.Background(), []Seed{{Name: "s", R: bytes.NewReader(data), Size: int64(len(data))}}, p, nil, b.Logf)
		}
	})
}
