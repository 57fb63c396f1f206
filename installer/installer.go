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
		path.Join(d, "vmlinuz.efi"):  payload.UKI,
		path.Join(d, "cmdline"):      payload.Cmdline,
		path.Join(d, "version"):      payload.Version,
	}
}

// Missing names the artifacts an installer image lacks, of those it must
// carry: a unified kernel image (vmlinuz.efi), or a kernel and an
// initramfs. has tells whether the image carries an artifact.
func Missing(has func(name string) bool) []string {
	if has(payload.UKI) {
		return nil
	}
	var out []string
	for _, r := range []string{payload.Kernel, payload.Initramfs} {
		if !has(r) {
			out = append(out, r)
		}
	}
	return out
}
