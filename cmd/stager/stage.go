package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/efivar"
	"github.com/stagehand-dev/stagehand/stage"
)

// addStageFlags makes the root command stage an upgrade: `stager --image REF`.
func addStageFlags(root *cobra.Command) {
	var o stage.Options
	var platform string
	var asJSON, reboot bool
	root.Flags().StringVar(&o.Image, "image", "", "installer image to stage: REGISTRY/REPO[:TAG|@sha256:DIGEST], oci:DIR[:TAG] or docker-archive:FILE")
	root.Flags().StringVar(&platform, "platform", "", "platform to pick from a multi-platform image, OS/ARCH[/VARIANT] (default: this machine's)")
	root.Flags().BoolVar(&o.Insecure, "insecure", false, "talk plain HTTP to the registry")
	root.Flags().Int64Var(&o.MaxArtifact, "max-artifact-size", stage.DefaultMaxArtifact, "refuse an artifact larger than this many bytes")
	root.Flags().BoolVar(&o.Retry, "retry", false, "stage an image even if it rolled back on this machine before")
	root.Flags().BoolVar(&o.AllowUntrusted, "allow-untrusted", false, "stage a UKI or kernel that the firmware's Secure Boot db would refuse (it is never kexec'd; the firmware's refusal rolls it back)")
	var firmwareVars string
	root.Flags().StringVar(&firmwareVars, "firmware-vars", "", "directory of EFI variables (efivarfs layout: SecureBoot, db, dbx) of the machine that boots --disk, to check the payload against its Secure Boot (default: this machine's, when --disk is the disk that booted or a block device)")
	root.Flags().BoolVar(&o.NoDelta, "no-delta", false, "read every blob whole, even when the image carries a delta index (by default only the chunks this machine does not hold are fetched)")
	var dryRun bool
	root.Flags().BoolVar(&dryRun, "dry-run", false, "say how many bytes staging would fetch, and what it would take from this machine's slots and STAGE, without writing anything")
	root.Flags().BoolVar(&reboot, "reboot", false, "reboot once the upgrade is staged")
	root.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	diskPath := cli.AddDiskFlag(root, nil)
	trust := cli.AddTrustFlags(root)
	root.Example = `  stager --image 127.0.0.1:5000/stagehand/os:v2 --disk /dev/vda
  stager --image 127.0.0.1:5000/stagehand/os:v2 --verify-key /etc/stagehand/keys/release.pub
  stager --image oci:/var/lib/images/os:v2 --reboot
  stager --image docker-archive:os-v2.tar --disk disk.img --json
  stager --image 127.0.0.1:5000/stagehand/os:v2 --dry-run`
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.Image == "" {
			return cmd.Help()
		}
		if platform != "" {
			p, err := v1.ParsePlatform(platform)
			if err != nil {
				return cli.Usage("--platform %q: %v", platform, err)
			}
			o.Platform = p
		}
		if _, err := stage.ParseSource(o.Image, o.Insecure); err != nil {
			return cli.UsageError{Err: err}
		}
		var err error
		if o.VerifyKeys, o.Policy, err = trust(); err != nil {
			return err
		}
		if o.Disk, err = diskPath(); err != nil {
			return err
		}
		if o.Firmware, err = firmwareOf(o.Disk, firmwareVars); err != nil {
			return err
		}
		if dryRun {
			if reboot {
				return cli.Usage("--dry-run writes nothing, so there is nothing to --reboot into")
			}
			o.Logf = cli.Logf(cmd)
			p, err := stage.Plan(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), p)
			}
			printPreview(cmd.OutOrStdout(), p)
			return nil
		}
		bar := newProgress(cmd.ErrOrStderr(), "staging")
		o.Progress, o.Transfer = bar.update, bar.transfer
		o.Logf = cli.Logf(cmd)
		start := time.Now()
		res, err := stage.Stage(cmd.Context(), o)
		bar.finish(err == nil)
		if errors.Is(err, stage.ErrUnverifiable) && len(o.VerifyKeys) > 0 {
			return cli.UsageError{Err: err}
		}
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		st := res.Staged
		switch {
		case asJSON:
			if err := cli.WriteJSON(out, struct {
				*stage.Result
				Seconds float64 `json:"seconds"`
			}{res, time.Since(start).Seconds()}); err != nil {
				return err
			}
		case res.AlreadyStaged:
			fmt.Fprintf(out, "%s (%s) is already staged for slot %s: nothing to do\n", st.Image, st.Digest, st.Target)
		default:
			fmt.Fprintf(out, "staged %s (%s) for slot %s: %d artifacts, %s in %s; it is applied at the next boot\n",
				st.Image, st.Digest, st.Target, len(st.Artifacts), humanBytes(res.Bytes), time.Since(start).Round(time.Millisecond))
		}
		if tr := st.Transfer; tr != nil && !asJSON && !res.AlreadyStaged {
			switch {
			case tr.Reused > 0:
				fmt.Fprintf(out, "delta: fetched %s, took %s from this machine\n", humanBytes(tr.Fetched), humanBytes(tr.Reused))
			case tr.Full != "":
				fmt.Fprintf(out, "fetched %s, the whole image: %s\n", humanBytes(tr.Fetched), tr.Full)
			}
		}
		if st.SignedBy != "" && !asJSON {
			fmt.Fprintf(out, "verified: cosign signature by key %s\n", st.SignedBy)
		}
		if fc := st.Firmware; fc != nil && !asJSON {
			if fc.Trusted {
				fmt.Fprintf(out, "verified: the firmware's Secure Boot db trusts it and dbx does not revoke it\n")
			} else {
				fmt.Fprintf(out, "warning: staged untrusted (--allow-untrusted): %s; it will not be kexec'd, and the firmware's refusal rolls it back\n", fc.Reason)
			}
		}
		if reboot {
			return rebootSystem(cmd)
		}
		return nil
	}
}

// firmwareOf is the firmware that boots diskPath, whose Secure Boot the
// payload is checked against: the variables in dir when given, else this
// machine's when diskPath is a block device (the disk that booted, or one
// attached to it); an image file's firmware is not known (nil).
func firmwareOf(diskPath, dir string) (*stage.Firmware, error) {
	var vars efivar.Store
	switch {
	case dir != "":
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, cli.Usage("--firmware-vars %s: not a directory of EFI variables", dir)
		}
		vars = efivar.Dir(dir)
	default:
		fi, err := os.Stat(diskPath)
		if err != nil || fi.Mode()&os.ModeDevice == 0 {
			return nil, nil
		}
		fs, err := efivar.NewFS(efivar.DefaultDir)
		if err != nil {
			return nil, nil // no EFI variables: no Secure Boot to check
		}
		vars = fs
	}
	f, err := stage.ReadFirmware(vars)
	if err != nil {
		return nil, fmt.Errorf("reading the firmware's Secure Boot state: %w", err)
	}
	return f, nil
}

// printPreview says what `stager --image REF --dry-run` found.
func printPreview(w io.Writer, p *stage.Preview) {
	fmt.Fprintf(w, "%s (%s): %s in its blobs\n", p.Image, p.Digest, humanBytes(p.Total))
	if p.AlreadyStaged {
		fmt.Fprintf(w, "it is staged already: staging it would fetch nothing\n")
		return
	}
	if p.Full != "" {
		fmt.Fprintf(w, "staging would fetch all of it: %s\n", p.Full)
		return
	}
	pct := 0.0
	if p.Total > 0 {
		pct = 100 * float64(p.Fetch) / float64(p.Total)
	}
	fmt.Fprintf(w, "staging would fetch %s (%.1f%%) in %d ranges, and take from this machine:\n", humanBytes(p.Fetch), pct, p.Ranges)
	for _, s := range p.Seeds {
		fmt.Fprintf(w, "  %-24s %s\n", s.Name, humanBytes(s.Bytes))
	}
}
