package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stagehand-dev/stagehand/internal/cli"

	"github.com/stagehand-dev/stagehand/initramfs"
)

func newInitramfsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "initramfs",
		Short: "Build initramfs archives that carry the pre-stage init",
	}
	cmd.AddCommand(newInitramfsBuildCmd())
	return cli.GroupOnly(cmd)
}

func newInitramfsBuildCmd() *cobra.Command {
	var base, prestage, modDir, modules, output string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Add the pre-stage init and its storage modules to an initramfs",
		Long: `Write OUTPUT: the base initramfs (the OS's own, compressed or not) followed by
an archive holding /prestage, the named kernel modules with everything they
depend on (read from each module's depends=; no depmod needed) and a
modules.dep for them, kept apart from the OS's /lib/modules. Boot it with
rdinit=/prestage: the pre-stage init runs first, then execs the OS's /init.
The same inputs give the same bytes.`,
		Example: `  stager initramfs build --base /boot/initrd.img --kernel-modules /lib/modules/6.1.0-28-cloud-amd64 \
      --modules virtio_pci,virtio_blk,nvme --prestage build/prestage --output initramfs.img`,
		Args: cli.ExactArgs(0, "no arguments"),
	}
	cmd.Flags().StringVar(&base, "base", "", "the OS's initramfs to append to (default: none, a stand-alone archive)")
	cmd.Flags().StringVar(&prestage, "prestage", "", "the prestage binary (default: prestage beside this stager)")
	cmd.Flags().StringVar(&modDir, "kernel-modules", "", "the kernel's module tree, /lib/modules/RELEASE")
	cmd.Flags().StringVar(&modules, "modules", "", "comma-separated modules to load before looking for disks")
	cmd.Flags().StringVar(&output, "output", "", "where to write the initramfs (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if output == "" {
			return cli.Usage("--output is required")
		}
		var names []string
		for _, m := range strings.Split(modules, ",") {
			if m = strings.TrimSpace(m); m != "" {
				names = append(names, m)
			}
		}
		if len(names) > 0 && modDir == "" {
			return cli.Usage("--modules needs --kernel-modules /lib/modules/RELEASE")
		}
		if prestage == "" {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			prestage = filepath.Join(filepath.Dir(self), "prestage")
		}
		o := initramfs.PrestageOptions{Binary: prestage, Names: names}
		if modDir != "" {
			t, err := initramfs.OpenModules(modDir)
			if err != nil {
				return err
			}
			o.Modules = t
		}
		a := initramfs.New()
		if err := a.AddPrestage(o); err != nil {
			return err
		}
		var baseBytes []byte
		if base != "" {
			var err error
			if baseBytes, err = os.ReadFile(base); err != nil {
				return fmt.Errorf("base initramfs: %w", err)
			}
		}
		// Write beside the output and rename: a failure leaves no half file.
		var n int64
		err := replaceFile(output, 0o644, func(w io.Writer) (err error) {
			n, err = initramfs.Append(w, baseBytes, a)
			return err
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%s: base %s, prestage part %s)\n", output, humanBytes(n), humanBytes(int64(len(baseBytes))), humanBytes(n-int64(len(baseBytes))))
		return nil
	}
	return cmd
}
