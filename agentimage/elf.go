package agentimage

import (
	"debug/elf"
	"fmt"
)

// machines are the ELF machines of the GOARCHes an image can be built for.
var machines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"ppc64le": elf.EM_PPC64,
	"riscv64": elf.EM_RISCV,
	"s390x":   elf.EM_S390,
}

// checkStatic refuses a binary that is not a static ELF executable of p's
// architecture: the image has no dynamic loader and no libc, and a binary
// of another architecture would fail only on the node, with "exec format
// error".
func checkStatic(path string, p Platform) error {
	if p.OS != "linux" {
		return fmt.Errorf("os %q: only linux images are built", p.OS)
	}
	want, ok := machines[p.Architecture]
	if !ok {
		return fmt.Errorf("architecture %q: not one of amd64, arm64, arm, 386, ppc64le, riscv64, s390x", p.Architecture)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("%s: a %s binary, not %s (GOARCH=%s go build)", path, f.Machine, want, p.Architecture)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s: an ELF %s, not an executable", path, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked, and the image has no libc (CGO_ENABLED=0 go build)", path)
		}
	}
	return nil
}
