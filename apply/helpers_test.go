package apply

import (
	"context"
	"io"

	"crypto/sha256"
	"github.com/stagehand-dev/stagehand/boot"
	"github.com/stagehand-dev/stagehand/meta"
	"os"
	"testing"
)

func hashFile(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// readSlot reads a slot's files into memory.
func readSlot(ctx context.Context, l Loader, slot meta.Slot) ([]byte, []byte, boot.SlotEntry, error) {
	f, err := l.OpenSlot(ctx, slot)
	if err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	defer f.Close()
	k, err := io.ReadAll(f.Kernel)
	if err != nil {
		return nil, nil, boot.SlotEntry{}, err
	}
	i, err := io.ReadAll(f.Initramfs)
	return k, i, f.Entry, err
}
