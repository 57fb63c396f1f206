package installer

import (
	"path"

	"github.com/stagehand-dev/stagehand/payload"
)

// Dir is the directory of the artifacts for arch, without a leading slash
// (as in tar entries).
func Dir(arch string) string { return path.Join("usr/install", arch) }

// Artifacts maps the tar path of each artifact for arch to its name.
func Artifacts(arch string) map[string]string {
	d := Dir(arch)
	return map[string]string{
		path.Join(d, "vmlinuz"):      payload.Kernel,
		path.Join(d, "initramfs.xz"): payload.Initramfs,
		path.Join(d, "cmdline"):      payload.Cmdline,
		path.Join(d, "version"):      payload.Version,
	}
}

// Required are the artifacts an installer image must carry.
var Required = []string{payload.Kernel, payload.Initramfs}
