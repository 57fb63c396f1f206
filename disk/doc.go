// Package disk opens a stagehand disk (an image file or a block device),
// reads its GPT, and hands out its partitions as bounded regions: META found
// by label and exact size, on the disk that booted and no other.
package disk
