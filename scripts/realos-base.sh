#!/usr/bin/env bash
# Builds the base tree of the real systemd OS that the VM tests boot
# (qemu-tests/realos): Debian bookworm's Essential packages plus systemd and
# udev, from apt's own sources (the host's, /etc/apt/sources.list.d), nothing
# recommended, with documentation, man pages, locales and udev's hardware
# database left out. Usage: scripts/realos-base.sh OUT (a directory, made
# anew; run as root). qemu-tests/realos keys its cache by this file's hash,
# so a change here (the package list is below) rebuilds the tree.
set -euo pipefail

packages=systemd,udev,kmod,systemd-boot
# REALOS_PINS: packages at given versions (pkg=version,...), added to the
# list: an older version of one package makes the "v1" that make bench's
# delta figures upgrade by that one package.
if [[ -n ${REALOS_PINS:-} ]]; then
	packages+=,$REALOS_PINS
fi
suite=bookworm

die() {
	echo "realos-base: $*" >&2
	exit 1
}
[[ $# == 1 ]] || die "usage: $0 OUT"
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap --mode=root); make qemu-test runs as root"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing; run 'make deps' as root"
out=$1
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[[ -s $f ]] && sources+=("$f")
done
((${#sources[@]})) || die "no APT sources in /etc/apt: mmdebstrap uses apt's own"

tmp=$out.tmp
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --mode=root --variant=essential --include="$packages" --quiet \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/lintian/*' \
	--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log "$1"/etc/udev/hwdb.bin "$1"/usr/lib/udev/hwdb.bin "$1"/usr/lib/udev/hwdb.d "$1"/usr/share/perl "$1"/usr/lib/x86_64-linux-gnu/perl "$1"/usr/lib/x86_64-linux-gnu/gconv' \
	"$suite" "$tmp" "${sources[@]}"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "realos-base: $out: $(du -sh "$out" | cut -f1), $(chroot "$out" dpkg-query -W | wc -l) packages"
