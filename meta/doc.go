// Package meta implements the META store: a Talos-compatible ADV key/value
// block, kept in two copies on a 1 MiB partition, written so that a power cut
// at any instruction loses at most the newest change.
//
// # On-disk format (byte-compatible with Talos's ADV)
//
// The partition holds two copies of one block, at offsets 0 and 256 KiB.
// Each copy is laid out as follows (L = 262144, integers big-endian):
//
//	offset      size   field
//	0           4      magic1 0x5a4b3c2d
//	4           ...    entries: u32 tag, u32 length, value[length], packed
//	...         8      u32 tag 0 ends the entries (omitted when they fill the area)
//	...         ...    zero padding up to L-36
//	L-36        32     SHA-256 of the whole copy with this field zeroed
//	L-4         4      magic2 0xa5b4c3d2
//
// The entries area is [4, L-36): Σ(length+8) ≤ 262104 bytes. Tags are at
// most 0xff because Talos keeps them as one byte. A copy is valid when both
// magics and the checksum match, every entry fits, no tag repeats, no tag is
// above 0xff and the bytes after the end tag are zero (Talos never writes
// anything else there); a valid copy re-encodes to the same bytes.
//
// # What stagehand adds
//
// Every copy written here carries a generation (tag 0x40). A write goes first
// to the copy that does not hold the newest valid generation, is synced, and
// only then is the other copy written and synced: a torn write leaves one
// valid copy, either the old contents or the new. Readers take the valid copy
// with the highest generation (copy 1 on a tie, as Talos reads it first). A
// corrupt copy is reported by Load and rewritten by the next Commit; both
// copies corrupt is an error naming the device, never an empty store. Two
// blank (all-zero) copies are a META that was never written: an empty store.
//
// # Tags
//
//	0x06  talos: previous boot label, for revert (Talos's meaning, kept)
//	0x07  talos: staged upgrade image reference (Talos's meaning, kept)
//	0x08  talos: staged upgrade install options, JSON (Talos's meaning, kept)
//	0x40  stagehand generation: u64 big-endian, incremented by every Commit
//	0x41  stagehand staged payload: JSON Staged (image, digest, artifacts in STAGE, target slot, time)
//	0x42  stagehand slot states: JSON Slots (phase, active, previous, trial and tries left, per-slot state)
//	0x43  stagehand transitions: JSON ring of the last 16 Transitions, oldest first, with reasons
//
// Other tags are kept as they are and written back unchanged.
package meta
