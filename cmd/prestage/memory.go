package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/stagehand-dev/stagehand/apply"
	"github.com/stagehand-dev/stagehand/kexec"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/payload"
)

// kexecMemory is the memory kexec_file_load takes at its peak for a
// kernel and an initramfs of these sizes: the memfds prestage fills, the
// copies the kernel reads them into, and the segments it places those in,
// all at once; and room for the rest. In a small machine a large slot
// does not fit: the kernel, short of memory with PID 1 as the only process,
// panics ("System is deadlocked on memory") instead of failing the call.
func kexecMemory(kernel, initramfs int64) int64 { return 3*(kernel+initramfs) + 32<<20 }

// checkKexecMemory refuses a kexec (ErrUnavailable: the firmware reboot is
// the way on) whose slot, as large as the staged payload's kernel and
// initramfs, would not fit in the memory available.
func checkKexecMemory(dk *apply.Disk) error {
	st, _, err := dk.Store.Block().Staged()
	if err != nil || st == nil {
		return nil // sizes unknown: try
	}
	k, ok1 := payload.Find(st.Artifacts, payload.Kernel)
	i, ok2 := payload.Find(st.Artifacts, payload.Initramfs)
	if u, ok := payload.Find(st.Artifacts, payload.UKI); ok {
		k, i, ok1, ok2 = u, meta.Artifact{}, true, true // a UKI's sections are about its size
	}
	if !ok1 || !ok2 {
		return nil
	}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil
	}
	avail, ok := memAvailable(string(b))
	if !ok {
		return nil
	}
	if need := kexecMemory(k.Size, i.Size); avail < need {
		return fmt.Errorf("%w: loading a %d MiB kernel and initramfs takes about %d MiB of memory, %d MiB are available",
			kexec.ErrUnavailable, (k.Size+i.Size)>>20, need>>20, avail>>20)
	}
	return nil
}

// memAvailable reads MemAvailable, in bytes, from the text of /proc/meminfo.
func memAvailable(meminfo string) (int64, bool) {
	for _, l := range strings.Split(meminfo, "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return n << 10, true
				}
			}
		}
	}
	return 0, false
}
