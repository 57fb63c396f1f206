package main

import (
	"time"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// clearDropped zeroes the bytes in STAGE of a payload META no longer
// refers to (refused or rolled back): STAGE holds nothing else, as after
// stager confirm and cancel. A failure is logged; the boot goes on.
func (p *prestage) clearDropped(dk *apply.Disk, st *meta.Staged) {
	start := time.Now()
	from, to := payload.Extent(st.Artifacts, dk.STAGE.Size)
	err := dk.STAGE.Zero(from, to-from)
	if err == nil {
		err = dk.STAGE.Sync()
	}
	if err != nil {
		p.logf("clearing the dropped payload from STAGE: %v", err)
		return
	}
	p.logf("cleared the dropped payload from STAGE (%d MiB) in %s", (to-from)>>20, time.Since(start).Round(time.Millisecond))
}
