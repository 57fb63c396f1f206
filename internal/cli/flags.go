package cli

import (
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/disk"
	"github.com/stagehand-dev/stagehand/sign"
)

// AddDiskFlag adds --disk to cmd and returns a function that resolves it:
// the flag's value, or the disk that booted as booted finds it
// (disk.Booted when nil).
func AddDiskFlag(cmd *cobra.Command, booted func() (string, error)) func() (string, error) {
	var path string
	cmd.Flags().StringVar(&path, "disk", "", "image file or block device holding the stagehand layout (default: the disk that booted)")
	if booted == nil {
		booted = disk.Booted
	}
	return func() (string, error) {
		if path != "" {
			return path, nil
		}
		return booted()
	}
}

// AddTrustFlags adds --verify-key and --policy to cmd and returns a
// function that loads them.
func AddTrustFlags(cmd *cobra.Command) func() ([]crypto.PublicKey, *sign.Policy, error) {
	var keyFiles []string
	var policy string
	cmd.Flags().StringArrayVar(&keyFiles, "verify-key", nil, "require a cosign signature by this public key (cosign.pub); repeat to accept any of several keys")
	cmd.Flags().StringVar(&policy, "policy", sign.DefaultPolicy, "policy file saying which registries and repositories need signatures, by which keys (the default file may be absent)")
	return func() ([]crypto.PublicKey, *sign.Policy, error) {
		var keys []crypto.PublicKey
		for _, f := range keyFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, nil, fmt.Errorf("--verify-key: %w", err)
			}
			k, err := sign.LoadPublicKey(b)
			if err != nil {
				return nil, nil, fmt.Errorf("--verify-key %s: %w", f, err)
			}
			keys = append(keys, k)
		}
		p, err := sign.LoadPolicy(policy, !cmd.Flags().Changed("policy"))
		if err != nil {
			return nil, nil, err
		}
		return keys, p, nil
	}
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Logf writes a library's log lines to the command's stderr.
func Logf(cmd *cobra.Command) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...)
	}
}
