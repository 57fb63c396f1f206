//go:build vm

package qemutests

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/stagehand-dev/stagehand/bootdisk"
	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/meta"
	"github.com/stagehand-dev/stagehand/qemu-tests/tpmseal"
	"github.com/stagehand-dev/stagehand/qemu-tests/vm"
)

// The TPM scenario (issue 25): an OS that keeps a secret sealed to the TPM
// under a signed PCR 11 policy, as systemd-cryptenroll --tpm2-public-key
// makes it for UKIs: the secret unseals only while PCR 11 holds a value
// the key's owner signed, which systemd-stub leaves after measuring a UKI
// that the firmware started. A kexec measures nothing: the kexec'd slot
// sees the previous boot's PCR 11.

// tpmSetup is a machine with swtpm, and what its OS's check needs.
type tpmSetup struct {
	m      *vm.Machine
	img    string
	pcrKey string // the policy signing key (PEM)
	secret []byte
}

// unsealedLine is the test OS's tpm-unseal success.
var unsealedLine = regexp.MustCompile(`stagehand-testos: tpm: PCR 11 = ([0-9a-f]+), signatures from (.*): unsealed sha256:([0-9a-f]+)`)

// newTPMSetup makes the machine: a TPM (swtpm) in which a secret is sealed
// under the policy key's signed PCR 11 policy; a disk whose ROOT
// partition holds a LUKS2 volume (cryptsetup) with a token of tokenType
// carrying the sealed blob and the key (systemd-tpm2, as
// systemd-cryptenroll writes it, or a type prestage does not know), and
// whose slot a holds v1, a UKI with the policy signed for its own PCR 11
// value.
func newTPMSetup(t *testing.T, tokenType, v1Steps string) *tpmSetup {
	t.Helper()
	checkHost(t)
	for _, tool := range []string{"swtpm", "cryptsetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (Debian packages swtpm, cryptsetup-bin): %s", tool, vm.Fix)
		}
	}
	dir := t.TempDir()
	s := &tpmSetup{pcrKey: filepath.Join(dir, "pcr.key"), secret: []byte("ROOT's volume key, " + t.Name())}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.pcrKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	tpm := &vm.TPM{Dir: filepath.Join(dir, "tpm")}
	var blob, policy []byte
	if err := tpm.Use(func(tp transport.TPM) (err error) {
		blob, policy, err = tpmseal.Seal(tp, pub, s.secret)
		return err
	}); err != nil {
		t.Fatalf("sealing the secret in swtpm: %v", err)
	}

	const rootSize = 20 << 20
	layout := disk.Layout{RootSize: rootSize}
	layout.Size = layout.MinSize()
	s.img = filepath.Join(dir, "disk.img")
	v1 := ukiSpec{flavor: "generic", version: "v1", steps: v1Steps, pcrKey: s.pcrKey}
	if _, err := bootdisk.Init(context.Background(), s.img, bootdisk.Config{Layout: layout, Version: "v1", UKI: ukiFile(t, v1)}); err != nil {
		t.Fatal(err)
	}

	// The LUKS2 volume: cryptsetup formats a file of ROOT's size (no
	// loop device) and imports the token, which is copied into ROOT.
	luks := filepath.Join(dir, "root.luks")
	keyFile := filepath.Join(dir, "root.key")
	if err := os.WriteFile(keyFile, s.secret, 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Create(luks); err != nil {
		t.Fatal(err)
	} else {
		f.Truncate(rootSize)
		f.Close()
	}
	token, err := json.Marshal(map[string]any{
		"type": tokenType, "keyslots": []string{"0"},
		"tpm2-blob": base64.StdEncoding.EncodeToString(blob), "tpm2-policy-hash": hex.EncodeToString(policy), "tpm2-pcrs": []int{}, "tpm2-pcr-bank": "sha256",
		"tpm2-primary-alg": "ecc", "tpm2-pin": false, "tpm2-pubkey": base64.StdEncoding.EncodeToString(pub), "tpm2-pubkey-pcrs": []int{tpmseal.PCR},
	})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token.json")
	if err := os.WriteFile(tokenFile, token, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", keyFile, luks},
		{"token", "import", "--json-file", tokenFile, luks},
	} {
		if b, err := exec.Command("cryptsetup", args...).CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup %s: %v: %s", strings.Join(args, " "), err, b)
		}
	}
	b, err := os.ReadFile(luks)
	if err != nil {
		t.Fatal(err)
	}
	withPartition(t, s.img, disk.LabelRoot, true, func(r *disk.Region) {
		if _, err := r.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	})
	s.m = newMachineWith(t, vm.Config{Disk: s.img, TPM: tpm})
	return s
}

// expectUnsealed waits for the test OS's check to unseal the secret and
// checks it is the one sealed; it returns where the signatures came from.
func (s *tpmSetup) expectUnsealed(t *testing.T, r *vm.Run, what string) string {
	t.Helper()
	got, _ := expect(t, r, what, stepTimeout, unsealedLine)
	if want := fmt.Sprintf("%x", sha256.Sum256(s.secret)); got[3] != want {
		t.Errorf("%s: unsealed sha256:%s, want %s", what, got[3], want)
	}
	t.Logf("%s: PCR 11 = %s, signatures from %s", what, got[1], got[2])
	return got[2]
}

// TestTPMSealed: v1 and v2 are UKIs carrying a PCR 11 policy signed with
// one key; ROOT's LUKS2 volume has a systemd-tpm2 token, so prestage never
// kexecs: v1 applies v2 and reboots through the firmware, whose start of
// v2's UKI lets its required check unseal the secret; v2 is confirmed
// (blessed at once: the firmware started it) and unseals it again at the
// next cold boot.
func TestTPMSealed(t *testing.T) {
	s := newTPMSetup(t, "systemd-tpm2", "!tpm-unseal,poweroff")
	r := start(t, s.m)
	expectTestOS(t, r, "v1, started by the firmware", "v1", kernel(t, "generic"), "")
	if from := s.expectUnsealed(t, r, "v1's check"); !strings.Contains(from, "systemd-stub") {
		t.Errorf("v1's signatures from %s, want systemd-stub's", from)
	}
	powerDown(t, r, "v1")

	v2 := ukiSpec{flavor: "generic", version: "v2", steps: "!tpm-unseal,confirm,poweroff", pcrKey: s.pcrKey}
	stageSpec(t, s.img, v2, true, meta.SlotB)
	r = start(t, s.m)
	applied(t, r)
	expect(t, r, "no kexec: the TPM", stepTimeout, regexp.MustCompile(`stagehand: .*through the firmware, not by kexec: .*LUKS2 volume with a systemd-tpm2 token`))
	expect(t, r, "v2's prestage", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 1 of 2`))
	expectTestOS(t, r, "v2, started by the firmware", "v2", kernel(t, "generic"), "")
	s.expectUnsealed(t, r, "v2's check")
	expect(t, r, "v2's confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	powerDown(t, r, "v2")
	if strings.Contains(r.Console(), "kexec into slot") {
		t.Error("prestage kexec'd a slot whose OS relies on the TPM")
	}
	st := status(t, s.img)
	if sl := st.Slots; sl.Active != meta.SlotB || sl.Pending != "" || sl.B.State != "good" || sl.Phase != meta.PhaseIdle {
		t.Fatalf("META after v2's confirm: %+v%s", sl, lastReasons(st, 4))
	}

	r = start(t, s.m)
	expect(t, r, "the cold boot's prestage", bootTimeout, regexp.MustCompile(`stagehand: continue: nothing staged`))
	expectTestOS(t, r, "v2 at the cold boot", "v2", kernel(t, "generic"), "")
	s.expectUnsealed(t, r, "v2's check at the cold boot")
	powerDown(t, r, "v2 at the cold boot")
	fsckESP(t, s.img)
}

// TestTPMKexecCannotUnseal: the same, but the token's type is one prestage
// does not know, so it kexecs v2 as anywhere else: v2's required check
// cannot unseal (PCR 11 holds v1's measurements: no signature of v2's is
// for it) and reboots without confirming; the firmware's boot-once starts
// v2's UKI, whose measurements let the check unseal, and v2 is confirmed.
func TestTPMKexecCannotUnseal(t *testing.T) {
	s := newTPMSetup(t, "stagehand-test-tpm2", "poweroff")
	v2 := ukiSpec{flavor: "generic", version: "v2", steps: "!tpm-unseal,confirm,poweroff", pcrKey: s.pcrKey}
	stageSpec(t, s.img, v2, true, meta.SlotB)
	r := start(t, s.m)
	applied(t, r)
	expect(t, r, "kexec", stepTimeout, kexecInto)
	expectTestOS(t, r, "v2, kexec'd", "v2", kernel(t, "generic"), meta.SlotB)
	got, _ := expect(t, r, "v2's check after the kexec", stepTimeout, regexp.MustCompile(`stagehand-testos: step tpm-unseal: error: (.*)`))
	t.Logf("v2's check after the kexec: %s", got[1])
	if !strings.Contains(got[1], tpmseal.ErrNoSignedValue.Error()) {
		t.Errorf("v2's check after the kexec failed with %q, want %q", got[1], tpmseal.ErrNoSignedValue)
	}
	expect(t, r, "no confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: required step tpm-unseal failed: rebooting`))
	expect(t, r, "v2's prestage, started by the firmware", bootTimeout, regexp.MustCompile(`stagehand: trial → trial \(slot b\): trial boot 2 of 2`))
	expectTestOS(t, r, "v2, started by the firmware", "v2", kernel(t, "generic"), "")
	s.expectUnsealed(t, r, "v2's check after the firmware's start")
	expect(t, r, "v2's confirm", stepTimeout, regexp.MustCompile(`stagehand-testos: stager confirm: confirmed slot b \(v2\)`))
	expect(t, r, "v2", poweroffTimeout, powerDownLine)
	if err := r.Wait(poweroffTimeout); err != nil {
		t.Fatalf("QEMU after power off: %v", err)
	}
	for _, l := range stagerTrouble.FindAllString(ansi.ReplaceAllString(r.Console(), ""), -1) {
		if !strings.Contains(l, "step tpm-unseal: error") {
			t.Errorf("v2: %s", l)
		}
	}
	if sl := status(t, s.img).Slots; sl.Active != meta.SlotB || sl.B.State != "good" || sl.Pending != "" {
		t.Fatalf("META: %+v", sl)
	}
}
