// Package delta stages a layer blob from bytes the machine already holds.
//
// An Index describes a blob as content-defined chunks (FastCDC), each by
// its length, CRC-32C and SHA-256. The machine chunks its seeds (the
// slots' files, the payload STAGE still holds) with the index's
// parameters; every chunk of the blob found there (by length and CRC-32C)
// is copied once its CRC-32C is checked, and only the others are read
// from the blob's source in byte ranges (HTTP Range from a registry, or a
// local file), each checked against its SHA-256. A Reader yields the
// blob's bytes in order and checks the whole against the blob's digest, so
// the stager's one streaming pass, its digest check and its bounded memory
// stay as they are: a delta changes where the bytes come from, never what
// is accepted.
//
// Content-defined boundaries are what make seeds useful: a chunk's end is
// chosen by the bytes around it, not by its offset, so the same bytes cut
// the same way in a slot's initramfs and in the tar layer that carries the
// next one, whatever precedes them.
package delta
