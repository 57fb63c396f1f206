package efivar

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"
)

// Store holds EFI variables, each named by a name and a vendor GUID.
type Store interface {
	// Get returns a variable's attributes and data; an error wrapping
	// fs.ErrNotExist when it is unset.
	Get(name string, vendor string) (attrs uint32, data []byte, err error)
	// Set creates or replaces a variable. Empty data removes it, as with
	// the firmware's SetVariable.
	Set(name string, vendor string, attrs uint32, data []byte) error
	// Remove removes a variable; nil when it is already unset.
	Remove(name string, vendor string) error
}

// LoaderVendor is the vendor GUID of the Boot Loader Interface variables
// (LoaderEntryOneShot, LoaderDevicePartUUID, ...) that systemd-boot reads
// and sets.
const LoaderVendor = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// Variable attributes (UEFI specification, SetVariable).
const (
	NonVolatile       = 0x1
	BootServiceAccess = 0x2
	RuntimeAccess     = 0x4
)

// DefaultDir is where efivarfs is mounted.
const DefaultDir = "/sys/firmware/efi/efivars"

// UEFIUnder tells whether the system whose root is root (the running
// one's: "/") was booted through UEFI: the kernel shows /sys/firmware/efi
// only then. A legacy BIOS has no variables at all.
func UEFIUnder(root string) bool {
	_, err := os.Stat(filepath.Join(root, "sys/firmware/efi"))
	return err == nil
}

// fileName is the name efivarfs gives a variable: NAME-vendor, the vendor
// GUID in lower case.
func fileName(name, vendor string) (string, uuid.UUID, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return "", uuid.UUID{}, fmt.Errorf("EFI variable name %q is empty or holds '/' or NUL", name)
	}
	g, err := parseVendor(vendor)
	if err != nil {
		return "", uuid.UUID{}, err
	}
	return name + "-" + g.String(), g, nil
}

func parseVendor(vendor string) (uuid.UUID, error) {
	// uuid.Parse also takes braces, URNs and hex without dashes; a vendor
	// is written one way only.
	if len(vendor) != 36 {
		return uuid.UUID{}, fmt.Errorf("EFI vendor %q is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", vendor)
	}
	g, err := uuid.Parse(vendor)
	if err != nil {
		return uuid.UUID{}, fmt.Errorf("EFI vendor %q is not a GUID: %v", vendor, err)
	}
	return g, nil
}

// GetString reads a variable holding a UTF-16LE string, NUL-terminated (as
// systemd-boot writes them); a missing terminator is accepted.
func GetString(s Store, name, vendor string) (string, error) {
	_, data, err := s.Get(name, vendor)
	if err != nil {
		return "", err
	}
	v, err := DecodeString(data)
	if err != nil {
		return "", fmt.Errorf("EFI variable %s-%s: %w", name, vendor, err)
	}
	return v, nil
}

// SetString writes v as a UTF-16LE string with a NUL terminator.
func SetString(s Store, name, vendor string, attrs uint32, v string) error {
	data, err := EncodeString(v)
	if err != nil {
		return fmt.Errorf("EFI variable %s-%s: %w", name, vendor, err)
	}
	return s.Set(name, vendor, attrs, data)
}

// DecodeString decodes UTF-16LE up to the first NUL.
func DecodeString(data []byte) (string, error) {
	if len(data)%2 != 0 {
		return "", fmt.Errorf("%d bytes are not a UTF-16 string", len(data))
	}
	u := make([]uint16, 0, len(data)/2)
	for i := 0; i+1 < len(data); i += 2 {
		c := binary.LittleEndian.Uint16(data[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}

// EncodeString encodes v as UTF-16LE with a NUL terminator.
func EncodeString(v string) ([]byte, error) {
	if strings.ContainsRune(v, 0) {
		return nil, fmt.Errorf("string %q holds a NUL", v)
	}
	u := utf16.Encode([]rune(v))
	b := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, 0, 0), nil
}

// Dir is a plain directory holding variables as efivarfs shows them: a
// file NAME-vendor holding 4 bytes of attributes (little-endian) and the
// data. For tests on a host without EFI, and for reading a copy of a
// machine's variables.
type Dir string

var _ Store = Dir("")

func notExist(op, file string) error {
	return &fs.PathError{Op: op, Path: "EFI variable " + file, Err: fs.ErrNotExist}
}

// Get implements Store. A file of 0 bytes is an unset variable, as in
// efivarfs.
func (d Dir) Get(name, vendor string) (uint32, []byte, error) {
	file, _, err := fileName(name, vendor)
	if err != nil {
		return 0, nil, err
	}
	b, err := os.ReadFile(filepath.Join(string(d), file))
	if err != nil {
		return 0, nil, err
	}
	if len(b) == 0 {
		return 0, nil, notExist("get", file)
	}
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("EFI variable %s: %d bytes, less than its 4 bytes of attributes", file, len(b))
	}
	return binary.LittleEndian.Uint32(b), b[4:], nil
}

// Set implements Store: it writes a temporary file and renames it into
// place.
func (d Dir) Set(name, vendor string, attrs uint32, data []byte) error {
	file, _, err := fileName(name, vendor)
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return d.Remove(name, vendor)
	}
	b := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(data)), attrs)
	b = append(b, data...)
	tmp, err := os.CreateTemp(string(d), "."+file+"-*")
	if err != nil {
		return fmt.Errorf("setting EFI variable %s: %w", file, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("setting EFI variable %s: %w", file, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("setting EFI variable %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(string(d), file)); err != nil {
		return fmt.Errorf("setting EFI variable %s: %w", file, err)
	}
	return nil
}

// Remove implements Store.
func (d Dir) Remove(name, vendor string) error {
	file, _, err := fileName(name, vendor)
	if err != nil {
		return err
	}
	err = os.Remove(filepath.Join(string(d), file))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// GlobalVendor is the vendor GUID of the UEFI specification's own
// variables (SecureBoot, BootOrder, ...).
const GlobalVendor = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

// SecureBoot tells whether the firmware enforces Secure Boot: the
// SecureBoot variable (one byte) is 1. An unset variable (firmware without
// Secure Boot) is false, without error.
func SecureBoot(s Store) (bool, error) {
	_, data, err := s.Get("SecureBoot", GlobalVendor)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading SecureBoot: %w", err)
	}
	if len(data) != 1 {
		return false, fmt.Errorf("SecureBoot holds %d bytes, want 1", len(data))
	}
	return data[0] == 1, nil
}

// ImageSecurityVendor is the vendor GUID of the Secure Boot signature
// databases db and dbx (EFI_IMAGE_SECURITY_DATABASE_GUID).
const ImageSecurityVendor = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"

// SHA256 is the sha256 (hex) of a variable's data, "" when it is unset:
// what was verified against db and dbx at staging is still what the
// firmware holds when the digests of both are unchanged.
func SHA256(s Store, name, vendor string) (string, error) {
	_, data, err := s.Get(name, vendor)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	return DataSHA256(data), nil
}

// DataSHA256 is SHA256 of a set variable's data, for a caller that has
// read it already.
func DataSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ReadOnly tells whether err is a firmware refusing variable writes at run
// time, as efivarfs reports it: a read-only mount or firmware without
// SetVariable at run time (EROFS), a firmware that answers EFI_INVALID_PARAMETER
// or EFI_UNSUPPORTED (EINVAL, EOPNOTSUPP), write protection (EPERM, EACCES),
// a full variable store (ENOSPC).
func ReadOnly(err error) bool {
	// u-root's efivarfs reports EPERM and EACCES as fs.ErrPermission.
	for _, e := range []error{unix.EROFS, unix.EINVAL, unix.EOPNOTSUPP, unix.EPERM, unix.EACCES, unix.ENOSPC, fs.ErrPermission} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
