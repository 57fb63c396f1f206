package meta

import (
	"os"
	"path/filepath"
	"testing"
)

func BenchmarkMarshal(b *testing.B) {
	blk := &Block{}
	blk.Set(TagTalosStagedImageRef, []byte("127.0.0.1:5000/stagehand/os:v2"))
	blk.Set(TagTransitions, make([]byte, 4000))
	b.SetBytes(BlockSize)
	for b.Loop() {
		blk.Marshal()
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	blk := &Block{}
	blk.Set(TagTransitions, make([]byte, 4000))
	buf, _ := blk.Marshal()
	b.SetBytes(BlockSize)
	for b.Loop() {
		if _, err := Unmarshal(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommit is a whole durable update on a file: two 256 KiB writes,
// each followed by a sync.
func BenchmarkCommit(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "meta"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	f.Truncate(PartitionSize)
	s, err := Load(f, "bench")
	if err != nil {
		b.Fatal(err)
	}
	blk := s.Block()
	for b.Loop() {
		if err := s.Commit(blk); err != nil {
			b.Fatal(err)
		}
	}
}
