package main

import (
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"
	"golang.org/x/term"

	"github.com/stagehand-dev/stagehand/sign"
	"github.com/stagehand-dev/stagehand/stage"
)

func newImageSignCmd() *cobra.Command {
	var keyFile string
	var insecure bool
	cmd := &cobra.Command{
		Use:   "sign --key cosign.key REF",
		Short: "Sign an installer image in a registry with a cosign key",
		Long: `Sign the image REF names in its registry as 'cosign sign --key' does: an
ECDSA P-256 signature over cosign's simple-signing payload for the manifest
digest, appended to the signature image REPO:sha256-<digest>.sig. A tag is
resolved to its digest first (for a multi-platform index, the index's digest).
Nothing is sent to a transparency log. The key is cosign's encrypted private
key (cosign generate-key-pair); the password comes from COSIGN_PASSWORD, or
is asked for on a terminal. 'stager --verify-key' and
'cosign verify --key cosign.pub --insecure-ignore-tlog' accept the signature.`,
		Example: `  COSIGN_PASSWORD=... stager image sign --key cosign.key 127.0.0.1:5000/stagehand/os:v2`,
		Args:    cli.ExactArgs(1, "one image reference"),
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "cosign private key file (required)")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "talk plain HTTP to the registry")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if keyFile == "" {
			return cli.Usage("--key is required")
		}
		src, err := stage.ParseSource(args[0], insecure)
		if err != nil {
			return cli.UsageError{Err: err}
		}
		if src.Transport != stage.Registry {
			return cli.Usage("%s: signatures live in a registry: sign a REGISTRY/REPO:TAG or @sha256:DIGEST reference", args[0])
		}
		pemBytes, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		password, err := keyPassword(cmd, keyFile)
		if err != nil {
			return err
		}
		priv, err := sign.LoadPrivateKey(pemBytes, password)
		if err != nil {
			return fmt.Errorf("--key %s: %w", keyFile, err)
		}
		opts := []sign.Option{sign.WithKeychain(authn.DefaultKeychain)}
		digest, err := sign.Digest(cmd.Context(), src.Ref, opts...)
		if err != nil {
			return stage.DescribeRegistryError(src.Ref, err)
		}
		res, err := sign.Sign(cmd.Context(), src.Ref, digest, priv, opts...)
		if err != nil {
			return stage.DescribeRegistryError(src.Ref, err)
		}
		if res.Already {
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%s) is already signed by key %s in %s: nothing to do\n", src, res.Digest, res.Fingerprint, res.Tag)
			return nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "signed %s (%s) with key %s into %s\n", src, res.Digest, res.Fingerprint, res.Tag)
		return nil
	}
	return cmd
}

// keyPassword is COSIGN_PASSWORD when set (even empty), else asked for on
// the terminal.
func keyPassword(cmd *cobra.Command, keyFile string) ([]byte, error) {
	if p, ok := os.LookupEnv("COSIGN_PASSWORD"); ok {
		return []byte(p), nil
	}
	in, ok := cmd.InOrStdin().(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return nil, fmt.Errorf("no password for %s: set COSIGN_PASSWORD (empty for a key without one) or run on a terminal", keyFile)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Enter password for private key %s: ", keyFile)
	p, err := term.ReadPassword(int(in.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	if err != nil {
		return nil, fmt.Errorf("reading the password: %w", err)
	}
	return p, nil
}
