package main

import (
	"fmt"
	"runtime"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/installer"
	"github.com/stagehand-dev/stagehand/stage"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and sign installer images",
	}
	cmd.AddCommand(newImageBuildCmd(), newImageSignCmd())
	return groupOnly(cmd)
}

func newImageBuildCmd() *cobra.Command {
	var o installer.BuildOptions
	var output, push string
	var insecure bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build an installer image from a kernel, an initramfs and a command line",
		Long: `Build an installer image: one uncompressed layer with the kernel and the
initramfs at Talos's paths (/usr/install/ARCH/vmlinuz, /usr/install/ARCH/initramfs.xz),
and optionally the kernel command line and a version. The build is reproducible:
the same inputs give the same digest.`,
		Example: `  stager image build --kernel vmlinuz --initramfs initrd.xz --version v2 --output oci:build/images:v2
  stager image build --kernel vmlinuz --initramfs initrd.xz --cmdline "console=ttyS0" --push 127.0.0.1:5000/os:v2`,
		Args: exactArgs(0, "no arguments"),
	}
	cmd.Flags().StringVar(&o.Kernel, "kernel", "", "kernel image (required)")
	cmd.Flags().StringVar(&o.Initramfs, "initramfs", "", "initramfs (required)")
	cmd.Flags().StringVar(&o.Cmdline, "cmdline", "", "kernel command line for the slot's entry")
	cmd.Flags().StringVar(&o.Version, "version", "", "version shown in the boot entry and by stager status")
	cmd.Flags().StringVar(&o.Arch, "arch", runtime.GOARCH, "architecture (Go name: amd64, arm64)")
	cmd.Flags().StringVar(&output, "output", "", "write to an OCI layout: oci:DIR[:TAG]")
	cmd.Flags().StringVar(&push, "push", "", "push to a registry: REGISTRY/REPO[:TAG]")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "push over plain HTTP")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.Kernel == "" || o.Initramfs == "" {
			return usageError{fmt.Errorf("--kernel and --initramfs are required")}
		}
		if (output == "") == (push == "") {
			return usageError{fmt.Errorf("give exactly one of --output oci:DIR[:TAG] and --push REF")}
		}
		dest := output + push
		src, err := stage.ParseSource(dest, insecure)
		if err != nil {
			return usageError{err}
		}
		if (output != "" && src.Transport != stage.OCILayout) || (push != "" && src.Transport != stage.Registry) {
			return usageError{fmt.Errorf("--output takes oci:DIR[:TAG] and --push a registry reference; got %q", dest)}
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
