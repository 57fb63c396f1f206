package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// SWTPM is Debian's software TPM (package swtpm).
const SWTPM = "swtpm"

// TPM is a machine's TPM 2.0: swtpm, its state in Dir kept across
// power-ons as a real TPM keeps its NV (its seeds, so the same primary
// keys), its PCRs reset at each power-on. QEMU reaches it as a TPM TIS
// device; OVMF measures the boot into it.
type TPM struct {
	Dir string
}

// swtpm starts swtpm on the control socket ctrl (and, when server is set,
// the TPM command socket server, for the host to use it without QEMU).
func (t *TPM) swtpm(ctrl, server string) (*exec.Cmd, error) {
	if _, err := exec.LookPath(SWTPM); err != nil {
		return nil, fmt.Errorf("vm: %s is not installed (Debian package swtpm): %s", SWTPM, Fix)
	}
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm: TPM state: %w", err)
	}
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + t.Dir, "--ctrl", "type=unixio,path=" + ctrl}
	if server != "" {
		args = append(args, "--server", "type=unixio,path="+server, "--flags", "not-need-init,startup-clear")
	} else {
		args = append(args, "--terminate") // ends with QEMU's connection
	}
	cmd := exec.Command(SWTPM, args...)
	out, err := os.Create(filepath.Join(t.Dir, "swtpm.log"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Start()
	out.Close()
	if err != nil {
		return nil, fmt.Errorf("vm: starting swtpm: %w", err)
	}
	wait := []string{ctrl}
	if server != "" {
		wait = append(wait, server)
	}
	for _, p := range wait {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				b, _ := os.ReadFile(filepath.Join(t.Dir, "swtpm.log"))
				return nil, fmt.Errorf("vm: swtpm did not make %s in 10 s: %s", p, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return cmd, nil
}

// stop ends swtpm with SIGTERM, on which it saves its state, and waits.
func stopSWTPM(cmd *exec.Cmd) error {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil // ended by the signal
		}
		return err
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		return errors.New("vm: swtpm did not end on SIGTERM")
	}
}

// Use runs f with the TPM as the host sees it (for provisioning: sealing a
// secret before the first power-on), then saves its state. No guest may
// run on it meanwhile.
func (t *TPM) Use(f func(transport.TPM) error) error {
	sock, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sock)
	cmd, err := t.swtpm(filepath.Join(sock, "ctrl"), filepath.Join(sock, "tpm"))
	if err != nil {
		return err
	}
	conn, err := net.Dial("unix", filepath.Join(sock, "tpm"))
	if err != nil {
		stopSWTPM(cmd)
		return fmt.Errorf("vm: connecting to swtpm: %w", err)
	}
	ferr := f(transport.FromReadWriter(conn))
	conn.Close()
	if err := stopSWTPM(cmd); ferr == nil {
		ferr = err
	}
	return ferr
}

// qemuArgs starts swtpm for one boot and returns QEMU's arguments for it;
// stop ends it after QEMU.
func (t *TPM) qemuArgs() (args []string, stop func(), err error) {
	sock, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		return nil, nil, err
	}
	ctrl := filepath.Join(sock, "ctrl")
	cmd, err := t.swtpm(ctrl, "")
	if err != nil {
		os.RemoveAll(sock)
		return nil, nil, err
	}
	stop = func() {
		stopSWTPM(cmd)
		os.RemoveAll(sock)
	}
	return []string{"-chardev", "socket,id=chrtpm,path=" + OptValue(ctrl),
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"}, stop, nil
}
