#!/usr/bin/env bash
# Installs what stagehand's VM tests need on a Debian machine, as root:
# QEMU, OVMF (with its Secure Boot build and snakeoil key), systemd-boot, the
# signing tools for Secure Boot (sbsigntool, openssl), a software TPM (swtpm)
# and the TPM2 libraries systemd-measure loads to sign PCR policies with it,
# cryptsetup (LUKS2 volumes sealed to it), the FAT, ext4 and cpio
# tools, mmdebstrap and squashfs-tools (the real systemd OS, qemu-tests/realos),
# and two different Debian
# kernels unpacked into build/kernels/{cloud,generic}/ (vmlinuz, release,
# package, lib/modules/RELEASE/...).
# Idempotent: packages already installed are not touched, apt-get update runs
# only when something is missing, and a kernel already unpacked is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
kernels=${STAGEHAND_KERNELS:-build/kernels}

die() {
	echo "vm-deps: $*" >&2
	exit 1
}

need_pkgs=(qemu-system-x86 seabios ovmf systemd-boot-efi dosfstools mtools cpio gdisk e2fsprogs mmdebstrap squashfs-tools sbsigntool openssl swtpm libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0 libtss2-tcti-swtpm0 cryptsetup-bin)
# GRUB 2.06's stock modules for BIOS and UEFI: the GRUB backend's images, and
# package grub's test that its grub.cfg uses only commands they provide.
need_pkgs+=(grub-pc-bin grub-efi-amd64-bin)
# grub-emu: GRUB 2.06's emulator, which package grub's TestEmu runs the
# stagehand grub.cfg under (under util-linux's script, from bsdutils, Essential).
need_pkgs+=(grub-emu)
need_files=(
	/usr/bin/qemu-system-x86_64
	/usr/share/OVMF/OVMF_CODE_4M.fd
	/usr/share/OVMF/OVMF_VARS_4M.fd
	/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd
	/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd
	/usr/share/ovmf/PkKek-1-snakeoil.key
	/usr/share/ovmf/PkKek-1-snakeoil.pem
	/usr/lib/systemd/boot/efi/linuxx64.efi.stub
	/usr/lib/systemd/boot/efi/systemd-bootx64.efi
	/usr/sbin/fsck.fat
	/usr/bin/mdir
	/usr/bin/cpio
	/usr/sbin/sgdisk
	/usr/sbin/mkfs.ext4
	/usr/bin/mmdebstrap
	/usr/bin/mksquashfs
	/usr/bin/unsquashfs
	/usr/bin/sbsign
	/usr/bin/sbattach
	/usr/bin/openssl
	/usr/bin/swtpm
	/usr/lib/systemd/systemd-measure
	/usr/sbin/cryptsetup
	/usr/lib/grub/i386-pc/command.lst
	/usr/lib/grub/x86_64-efi/command.lst
)

updated=0
apt_update() {
	((updated)) && return 0
	apt-get update -qq || die "apt-get update failed; fix the APT sources and run 'make deps' again"
	updated=1
}

missing=()
for p in "${need_pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	[[ $(id -u) == 0 ]] || die "missing Debian packages ${missing[*]}; run 'make deps' as root"
	echo "vm-deps: installing ${missing[*]}"
	apt_update
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed; run 'apt-get install ${missing[*]}' as root to see why"
fi
for f in "${need_files[@]}"; do
	[[ -e $f ]] || die "$f is missing after installing ${need_pkgs[*]}; run 'apt-get install --reinstall ${need_pkgs[*]}' as root"
done

# resolve META-PACKAGE prints the versioned kernel package that META-PACKAGE
# depends on (linux-image-cloud-amd64 -> linux-image-6.1.0-NN-cloud-amd64).
resolve() {
	local pkg
	pkg=$(apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
	if [[ -z $pkg && $updated == 0 && $(id -u) == 0 ]]; then
		apt_update
		pkg=$(apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
	fi
	[[ -n $pkg ]] || die "cannot resolve the kernel package behind $1 with 'apt-cache depends $1'; run 'apt-get update' as root"
	echo "$pkg"
}

# fetch FLAVOR META-PACKAGE downloads and unpacks the kernel into
# $kernels/FLAVOR unless it is there already.
fetch() {
	local flavor=$1 meta=$2 dir=$kernels/$1
	if [[ -s $dir/vmlinuz && -s $dir/release && -d $dir/lib/modules/$(cat "$dir/release" 2>/dev/null) ]]; then
		return 0
	fi
	local pkg tmp release
	pkg=$(resolve "$meta")
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/vm-deps.XXXXXX")
	trap 'rm -rf "$tmp"; trap - RETURN' RETURN
	echo "vm-deps: downloading $pkg ($flavor)"
	(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null) ||
		die "apt-get download $pkg failed; run 'apt-get update' as root, then 'make deps'"
	dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root" || die "dpkg-deb -x of $pkg failed (is $tmp writable?)"
	local vmlinuz=("$tmp"/root/boot/vmlinuz-*)
	[[ -f ${vmlinuz[0]} ]] || die "$pkg holds no boot/vmlinuz-*"
	release=${vmlinuz[0]##*/vmlinuz-}
	[[ -d $tmp/root/lib/modules/$release ]] || die "$pkg holds no lib/modules/$release"
	rm -rf "$dir" "$dir.new"
	mkdir -p "$dir.new/lib/modules"
	mv "${vmlinuz[0]}" "$dir.new/vmlinuz"
	chmod 0644 "$dir.new/vmlinuz"
	mv "$tmp/root/lib/modules/$release" "$dir.new/lib/modules/"
	[[ -f $tmp/root/boot/config-$release ]] && mv "$tmp/root/boot/config-$release" "$dir.new/config"
	echo "$release" >"$dir.new/release"
	echo "$pkg" >"$dir.new/package"
	mv "$dir.new" "$dir"
}

fetch cloud linux-image-cloud-amd64
fetch generic linux-image-amd64

declare -A rel
for flavor in cloud generic; do
	dir=$kernels/$flavor
	[[ -s $dir/vmlinuz ]] || die "$dir/vmlinuz is missing; remove $dir and run 'make deps'"
	rel[$flavor]=$(cat "$dir/release")
	# The bzImage setup header carries the release uncompressed.
	grep -qaF "${rel[$flavor]} (" "$dir/vmlinuz" ||
		die "$dir/vmlinuz does not say it is ${rel[$flavor]}; remove $dir and run 'make deps'"
	[[ -d $dir/lib/modules/${rel[$flavor]}/kernel ]] || die "$dir/lib/modules/${rel[$flavor]}/kernel is missing; remove $dir and run 'make deps'"
done
[[ ${rel[cloud]} != "${rel[generic]}" ]] ||
	die "the cloud and generic kernels are both ${rel[cloud]}: the VM tests need two different kernels; remove $kernels and run 'make deps'"

echo "vm-deps: ok (qemu $(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p'), OVMF 4M, systemd-boot, kernels cloud=${rel[cloud]} generic=${rel[generic]} in $kernels)"
