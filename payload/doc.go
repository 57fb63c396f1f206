// Package payload defines how a staged payload lies in the STAGE partition
// and verifies it against META, with no filesystem and no image library: the
// pre-stage init reads it at early boot.
//
// STAGE is split into two halves so that a new stage never overwrites the
// payload META still refers to. Each half starts with a 4 KiB header,
// followed by the artifacts, each starting on a 4 KiB boundary:
//
//	offset  size  field
//	0       8     magic "STGPAYL1"
//	8       4     u32 big-endian length n of the manifest
//	12      32    SHA-256 of the manifest
//	44      n     manifest: JSON Header (image, digest, artifacts)
//	44+n    ...   zeros up to 4096
//
// Artifact offsets are bytes from the start of the STAGE partition, as in
// META's staged record. META is the authority: the pre-stage init applies
// only what META records, and checks every artifact's SHA-256 first; the
// header makes a half self-describing for inspection and repair.
package payload
