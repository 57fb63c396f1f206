#!/usr/bin/env bash
# Installs what stagehand's build and tests need on a Debian machine, as root.
# Idempotent: packages already installed are not touched, and apt-get update
# runs only when something is missing.
set -euo pipefail

# sbsigntool and openssl: the UKI tests sign with Debian ovmf's snakeoil key.
# osslsigncode: the authenticode tests check their hash against its digest.
# ca-certificates: the agent's image carries its bundle (agentimage's tests too).
# grub-common: grub/grubenv's tests compare its blocks byte for byte with grub-editenv's.
# docker-registry: make demo stages from it, and delta staging is tested against its Range answers.
need_pkgs=(util-linux dosfstools mtools time e2fsprogs sbsigntool openssl osslsigncode ca-certificates grub-common docker-registry)
# make image needs only the CA bundle it copies into the image.
if [[ ${1:-} == image ]]; then
	need_pkgs=(ca-certificates)
fi

missing=()
for p in "${need_pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "deps: missing Debian packages ${missing[*]}; run 'make deps' as root" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
	echo "deps: no Go toolchain on PATH (Go 1.26 is expected at /usr/local/go)" >&2
	exit 1
fi
echo "deps: ok ($(go version | cut -d' ' -f3), ${need_pkgs[*]})"
