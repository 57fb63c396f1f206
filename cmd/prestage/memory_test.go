package main

import "testing"

func TestMemAvailable(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"MemTotal:         230580 kB\nMemFree:          150000 kB\nMemAvailable:     187104 kB\nBuffers: 0 kB\n", 187104 << 10, true},
		{"MemTotal: 1 kB\n", 0, false},
		{"MemAvailable: lots\n", 0, false},
	} {
		if got, ok := memAvailable(c.in); got != c.want || ok != c.ok {
			t.Errorf("memAvailable(%q) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestKexecMemory: a 128 MiB slot does not fit a 256 MiB machine (about
// 190 MiB available once booted), the VM tests' 20 MiB slot fits 1 GiB.
func TestKexecMemory(t *testing.T) {
	if need := kexecMemory(8<<20, 120<<20); need <= 190<<20 {
		t.Errorf("a 128 MiB slot needs %d MiB, fits 190 MiB", need>>20)
	}
	if need := kexecMemory(8<<20, 12<<20); need > 900<<20 {
		t.Errorf("a 20 MiB slot needs %d MiB, does not fit 900 MiB", need>>20)
	}
}
