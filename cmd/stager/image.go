package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/stage"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and sign installer images",
	}
	cmd.AddCommand(newImageBuildCmd(), newImageSignCmd())
	return cli.GroupOnly(cmd)
}

func newImageBuildCmd() *cobra.Command {
	var o installer.BuildOptions
	var u installer.UKIOptions
	var output, push string
	var insecure, asUKI bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build an installer image, with its delta index, from a kernel, an initramfs and a command line",
		Long: `Build an installer image of two uncompressed layers. The first holds the kernel
and the initramfs at Talos's paths (/usr/install/ARCH/vmlinuz,
/usr/install/ARCH/initramfs.xz), and optionally the kernel command line and a
version. The second holds stagehand/delta-index, the index of the first
layer's content-defined chunks; its manifest entry names the first layer
(annotation dev.stagehand.delta-index.of), so a signature of the image covers
it. With it 'stager --image' copies the chunks a machine already holds in its
slots and STAGE, and fetches only the others (HTTP Range from a registry). It
costs about 0.3 s of build time per 200 MiB of artifacts and 1 KiB of index per MiB; a
stager without delta staging ignores it. The build is reproducible: the same
inputs give the same digest.

With --uki the kernel, initramfs and command line are built into one unified
kernel image (systemd-stub with .linux, .initrd, .cmdline, .osrel, .uname) at
/usr/install/ARCH/vmlinuz.efi, installed as a systemd-boot Type #2 entry;
--sign-key and --sign-cert sign it for Secure Boot (sbsign, Debian package
sbsigntool). Its command line must not name stagehand.slot: a UKI serves
either slot.

--pcr-private-key embeds a PCR 11 policy signed with an RSA key (PEM) and its
public key (.pcrsig and .pcrpkey, as ukify --pcr-private-key does), so that
the OS can seal its secrets to every UKI signed with the key
(systemd-cryptenroll --tpm2-public-key) instead of to one build's PCR values,
which the next upgrade changes. It runs systemd-measure (Debian package
systemd), which in systemd 252 needs a TPM: swtpm (Debian package swtpm) if
installed, else the machine's own.`,
		Example: `  stager image build --kernel vmlinuz --initramfs initrd.xz --version v2 --output oci:build/images:v2
  stager image build --kernel vmlinuz --initramfs initrd.xz --cmdline "console=ttyS0" --push 127.0.0.1:5000/os:v2
  stager image build --uki --kernel vmlinuz --initramfs initrd.xz --cmdline "console=ttyS0 rdinit=/prestage" --version v2 --sign-key db.key --sign-cert db.pem --output oci:build/images:v2
  stager image build --uki --kernel vmlinuz --initramfs initrd.xz --version v2 --pcr-private-key pcr.key --output oci:build/images:v2`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	cmd.Flags().StringVar(&o.Kernel, "kernel", "", "kernel image (required)")
	cmd.Flags().StringVar(&o.Initramfs, "initramfs", "", "initramfs (required)")
	cmd.Flags().StringVar(&o.Cmdline, "cmdline", "", "kernel command line for the slot's entry")
	cmd.Flags().StringVar(&o.Version, "version", "", "version shown in the boot entry and by stager status")
	cmd.Flags().StringVar(&o.Arch, "arch", runtime.GOARCH, "architecture (Go name: amd64, arm64)")
	cmd.Flags().StringVar(&output, "output", "", "write to an OCI layout: oci:DIR[:TAG]")
	cmd.Flags().StringVar(&push, "push", "", "push to a registry: REGISTRY/REPO[:TAG]")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "push over plain HTTP")
	cmd.Flags().BoolVar(&asUKI, "uki", false, "build a unified kernel image from the kernel, initramfs and command line")
	cmd.Flags().StringVar(&u.Stub, "stub", installer.SystemdStub, "with --uki: systemd-stub")
	cmd.Flags().StringVar(&u.SignKey, "sign-key", "", "with --uki: sign it with this key (PEM), for Secure Boot")
	cmd.Flags().StringVar(&u.SignCert, "sign-cert", "", "with --uki: the key's certificate (PEM)")
	cmd.Flags().StringVar(&u.PCRPrivateKey, "pcr-private-key", "", "with --uki: sign its PCR 11 policy with this RSA key (PEM) and embed the public key, so that the OS can seal secrets to every UKI signed with it (systemd-cryptenroll --tpm2-public-key)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.Kernel == "" || o.Initramfs == "" {
			return cli.Usage("--kernel and --initramfs are required")
		}
		if (output == "") == (push == "") {
			return cli.Usage("give exactly one of --output oci:DIR[:TAG] and --push REF")
		}
		dest := output + push
		src, err := stage.ParseSource(dest, insecure)
		if err != nil {
			return cli.UsageError{Err: err}
		}
		if (output != "" && src.Transport != stage.OCILayout) || (push != "" && src.Transport != stage.Registry) {
			return cli.Usage("--output takes oci:DIR[:TAG] and --push a registry reference; got %q", dest)
		}
		if !asUKI && (u.SignKey != "" || u.SignCert != "" || u.PCRPrivateKey != "" || cmd.Flags().Changed("stub")) {
			return cli.Usage("--sign-key, --sign-cert, --pcr-private-key and --stub go with --uki")
		}
		if asUKI {
			dir, err := os.MkdirTemp(o.TempDir, "stagehand-uki-*")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			u.Kernel, u.Initramfs, u.Cmdline, u.Version = o.Kernel, o.Initramfs, o.Cmdline, o.Version
			o.UKI = filepath.Join(dir, "vmlinuz.efi")
			if err := installer.BuildUKI(cmd.Context(), o.UKI, u); err != nil {
				return err
			}
			o.Kernel, o.Initramfs, o.Cmdline = "", "", ""
		}
		img, err := installer.Build(o)
		if err != nil {
			return err
		}
		defer img.Close()
		if output != "" {
			err = installer.WriteLayout(src.Path, src.Tag, img)
		} else {
			err = installer.Push(cmd.Context(), src.Ref, img, authn.DefaultKeychain)
		}
		if err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "built installer image %s (linux/%s) into %s\n", digest, o.Arch, dest)
		return nil
	}
	return cmd
}
