package vm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"unicode/utf16"

	"github.com/google/uuid"

	"github.com/stagehand-dev/stagehand/efivar"
)

// SecureBootVariables copies what a machine's firmware enforces under
// Secure Boot out of its variable store (the OVMF_VARS file: db and dbx as
// enrolled) into dir, laid out as efivarfs shows them, with SecureBoot set
// as the firmware sets it at boot: what `stager --image --firmware-vars
// DIR` checks a payload against when it stages onto the machine's disk
// from the host.
func (m *Machine) SecureBootVariables(dir string) error {
	fd, err := os.ReadFile(m.vars)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	store := efivar.Dir(dir)
	const attrs = efivar.NonVolatile | efivar.BootServiceAccess | efivar.RuntimeAccess
	sb := []byte{0}
	if m.cfg.Firmware.SecureBoot {
		sb[0] = 1
	}
	if err := store.Set("SecureBoot", efivar.GlobalVendor, efivar.BootServiceAccess|efivar.RuntimeAccess, sb); err != nil {
		return err
	}
	for _, name := range []string{"db", "dbx"} {
		data, ok := ovmfVariable(fd, name, efivar.ImageSecurityVendor)
		if !ok {
			continue
		}
		if err := store.Set(name, efivar.ImageSecurityVendor, attrs|0x20, data); err != nil {
			return err
		}
	}
	return nil
}

// ovmfVariable finds a variable in an OVMF variable store (a firmware
// volume whose authenticated variables follow the 28-byte store header,
// each a 60-byte header, its UTF-16 name and its data, 4-byte aligned),
// taking only variables in the added state (0x3f).
func ovmfVariable(fd []byte, name, vendor string) ([]byte, bool) {
	g, err := uuid.Parse(vendor)
	if err != nil || len(fd) < 50 {
		return nil, false
	}
	// The GUID as EFI stores it: its first three fields little-endian.
	want := g[:]
	want = append([]byte{want[3], want[2], want[1], want[0], want[5], want[4], want[7], want[6]}, want[8:]...)
	var wantName []byte
	for _, c := range utf16.Encode([]rune(name + "\x00")) {
		wantName = binary.LittleEndian.AppendUint16(wantName, c)
	}
	off := int(binary.LittleEndian.Uint16(fd[48:])) + 28
	var found []byte
	for off+60 <= len(fd) && binary.LittleEndian.Uint16(fd[off:]) == 0x55aa {
		nsize, dsize := int(binary.LittleEndian.Uint32(fd[off+36:])), int(binary.LittleEndian.Uint32(fd[off+40:]))
		if nsize < 0 || dsize < 0 || off+60+nsize+dsize > len(fd) {
			break
		}
		if fd[off+2] == 0x3f && bytes.Equal(fd[off+44:off+60], want) && bytes.Equal(fd[off+60:off+60+nsize], wantName) {
			found = append([]byte(nil), fd[off+60+nsize:off+60+nsize+dsize]...)
		}
		off = (off + 60 + nsize + dsize + 3) &^ 3
	}
	return found, found != nil
}
