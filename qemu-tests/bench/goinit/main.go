// Command goinit is the bench's reference pre-stage init: a Go program
// that does nothing but exec /init. Booted with rdinit=/goinit it shows
// what starting any Go PID 1 costs on the machine, the floor under
// prestage's no-op overhead.
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	err := unix.Exec("/init", append([]string{"/init"}, os.Args[1:]...), os.Environ())
	os.Stderr.WriteString("goinit: exec /init: " + err.Error() + "\n")
	os.Exit(1)
}
