package main

import (
	"crypto"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/sign"
)

// addTrustFlags adds --verify-key and --policy to cmd and returns a
// function that loads them.
func addTrustFlags(cmd *cobra.Command) func() ([]crypto.PublicKey, *sign.Policy, error) {
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
