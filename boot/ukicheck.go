package boot

import (
	"fmt"
	"io"

	"github.com/stagehand-dev/stagehand/cmdline"
	"github.com/stagehand-dev/stagehand/uki"
)

// CheckUKI reads the UKI of size bytes in r as a slot's image: a UKI with a
// kernel, whose command line names no slot.
func CheckUKI(r io.ReaderAt, size int64) (*uki.Image, error) {
	u, err := uki.Open(r, size)
	if err != nil {
		return nil, err
	}
	return u, CheckUKICmdline(u)
}

// CheckUKICmdline checks that u's command line names no slot: a backend
// installing a UKI it has opened checks it so.
func CheckUKICmdline(u *uki.Image) error {
	if v, ok := cmdline.Get(u.Cmdline, SlotParam); ok {
		return fmt.Errorf("its command line says %s=%s: a UKI serves either slot, leave it out (the slot is known from the entry systemd-boot booted)", SlotParam, v)
	}
	return nil
}
