// Package installer defines the installer image format stagehand stages
// from, and builds such images reproducibly.
//
// An installer image is an OCI (or Docker) image whose layers carry, at
// Talos's paths:
//
//	/usr/install/<arch>/vmlinuz        the kernel (required)
//	/usr/install/<arch>/initramfs.xz   the initramfs (required)
//	/usr/install/<arch>/cmdline        stagehand: the kernel command line (optional)
//	/usr/install/<arch>/version        stagehand: the version shown in boot entries (optional)
//
// where <arch> is the Go architecture (amd64, arm64). Every other file is
// ignored; the artifacts must be regular files.
//
// Build also adds, unless told not to, a layer holding the delta index of
// the artifact layer at /stagehand/delta-index (IndexPath), its manifest
// descriptor annotated with the digest of the layer it indexes
// (IndexAnnotation); IndexOf finds it in a manifest and ReadIndex reads it.
package installer
