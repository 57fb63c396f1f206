package systemdboot

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/fat"
	"github.com/stagehand-dev/stagehand/meta"
)

// fileDevice is an ESP in a file of its own.
type fileDevice struct{ *os.File }

func (f fileDevice) Sync() error { return f.File.Sync() }

// BenchmarkInstallSlot writes a 64 MiB slot (kernel and initramfs) onto an
// ESP through go-diskfs, for the ESP sizes around the 260 MiB line where
// FAT32's clusters grow from 512 bytes to 4 KiB, and reports MB/s.
func BenchmarkInstallSlot(b *testing.B) {
	kernel := bytes.Repeat([]byte("k"), 8<<20)
	initrd := bytes.Repeat([]byte("i"), 56<<20)
	for _, size := range []int64{256 << 20, 300 << 20} {
		b.Run(fmt.Sprintf("esp=%dMiB", size>>20), func(b *testing.B) {
			p := filepath.Join(b.TempDir(), "esp")
			f, _ := os.Create(p)
			defer f.Close()
			f.Truncate(size)
			esp, err := fat.Format(fileDevice{f}, size, boot.ESPLabel)
			if err != nil {
				b.Fatal(err)
			}
			s := New(esp)
			var secs []float64
			for b.Loop() {
				start := time.Now()
				if err := s.InstallSlot(context.Background(), meta.SlotB, boot.Image{Kernel: bytes.NewReader(kernel), Initramfs: bytes.NewReader(initrd), Version: "v"}); err != nil {
					b.Fatal(err)
				}
				secs = append(secs, time.Since(start).Seconds())
			}
			b.ReportMetric(float64(len(kernel)+len(initrd))/secs[len(secs)/2]/1e6, "MB/s")
		})
	}
}
