#!/usr/bin/env bash
# Builds the tools the fleet tests run (a real kube-apiserver and etcd) into a
# cache keyed by their tools module, so a machine builds each once:
#   tools/build.sh kube-apiserver|etcd     build if missing, print the binary's path
#   tools/build.sh -p kube-apiserver|etcd  print the path only (no build)
# The cache is $STAGEHAND_TOOLS, else $HOME/.cache/stagehand/tools.
set -euo pipefail
cd "$(dirname "$0")"
only_path=0
if [ "${1:-}" = -p ]; then only_path=1; shift; fi
name=${1:?usage: tools/build.sh [-p] kube-apiserver|etcd}
case $name in
kube-apiserver)
	mod=kube pkg=k8s.io/kubernetes/cmd/kube-apiserver
	v=k8s.io/component-base/version
	ldflags="-s -w -X $v.gitVersion=v1.37.2 -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean"
	;;
etcd)
	mod=etcd pkg=go.etcd.io/etcd/server/v3
	ldflags="-s -w"
	;;
*) echo "tools/build.sh: unknown tool $name (kube-apiserver or etcd)" >&2; exit 2 ;;
esac
go=${GO:-go}
key=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "$ldflags"; "$go" env GOVERSION; } | sha256sum | cut -c1-16)
dir=${STAGEHAND_TOOLS:-$HOME/.cache/stagehand/tools}/$name-$key
bin=$dir/$name
if [ $only_path = 1 ] || [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
start=$(date +%s)
(cd "$mod" && CGO_ENABLED=0 GOTOOLCHAIN=local "$go" build -trimpath -ldflags="$ldflags" -o "$bin.tmp" "$pkg")
mv "$bin.tmp" "$bin"
echo "tools/build.sh: built $name in $(( $(date +%s) - start )) s" >&2
echo "$bin"
