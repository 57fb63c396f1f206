#!/usr/bin/env bash
# Makes qemu.log, the write log TestQEMULog reads: QEMU's blklogwrites
# driver (qemu-io of Debian's QEMU 7.2, package qemu-utils) logging writes
# and flushes to a 1 MiB image. The last write is never followed by a flush,
# as at a SIGKILL.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
truncate -s 1M "$tmp/img"
: >"$tmp/log"
qemu-io -c 'write -P 0xab 4096 8192' -c flush -c 'write -P 0xcd 0 512' \
	-c 'write -P 0x11 1536 1024' -c flush -c 'write -P 0x22 8192 512' \
	--image-opts "driver=blklogwrites,file.driver=file,file.filename=$tmp/img,log.driver=file,log.filename=$tmp/log,log-sector-size=512,log-super-update-interval=2" >/dev/null
cp "$tmp/log" qemu.log
