// Package writelog reads and writes dm-log-writes v1 logs, the format of
// QEMU's blklogwrites driver: every write a disk saw, with its data, and
// every flush, in the order they completed.
package writelog
