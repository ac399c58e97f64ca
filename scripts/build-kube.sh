#!/usr/bin/env bash
# Build the real Kubernetes control plane the realkube test tier runs: kube-apiserver and
# kube-controller-manager from the k8s.io/kubernetes Go module, etcd from go.etcd.io/etcd/server/v3
# (the version k8s.io/kubernetes itself requires). The Go modules that pin them are scripts/kube/.
#
# Binaries land in .tools/kube/<version>/bin/ and a copy is kept in
# ${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents/kube/<version>/ so a fresh clone on the same machine
# reuses them in seconds. Idempotent: with the binaries present it only prints where they are.
# A cold build prints its wall time and the disk it added (Go module cache, Go build cache, binaries).
#
# Usage: scripts/build-kube.sh [DEST]   (DEST defaults to .tools/kube at the repository root)
#
# What a cold build compiles, and why it is not made smaller (`go list -deps`, Go 1.26, v1.35.4):
# kube-apiserver needs 2,000 packages and kube-controller-manager 2,369; both together 2,374, so one
# `go build` of the two costs hardly more than either alone. Only runtime/cgo, net and os/user use cgo
# (CGO_ENABLED=0 would save little); -s already implies -w; -trimpath is set; -p defaults to the cores.
# etcd adds 351 packages outside the standard library, of which 69 are shared with the Kubernetes
# build at the same version: aligning scripts/kube/etcd/go.mod with k8s.io/kubernetes' versions could
# save about 160 compiles. The compiler's optimizations and inlining are off (-gcflags=all=-N -l): the
# tier needs these servers to behave as released, not to run fast, and the cold build then takes about
# 0.7 times as long (k8s.io/api/... and k8s.io/kubernetes/pkg/apis/core/... from an empty build cache:
# 113 s optimized, 81 s without). Any change of version or stamp changes the KEY, which costs every
# machine one cold build; a flag that trades only speed does not, so machines that built the optimized
# binaries under this KEY keep them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE_VERSION="v1.35.4"   # scripts/kube/go.mod pins the same
ETCD_VERSION="v3.6.5"    # scripts/kube/etcd/go.mod pins the same; k8s.io/kubernetes v1.35.4 requires it
# The key changes with anything that changes what the binaries do (r2: the version stamp).
KEY="$KUBE_VERSION-etcd-$ETCD_VERSION-r2"
DEST="${1:-$ROOT/.tools/kube}/$KEY/bin"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents/kube/$KEY/bin"
BINARIES=(kube-apiserver kube-controller-manager etcd)

have_all() {
  local dir="$1" name
  for name in "${BINARIES[@]}"; do
    [ -x "$dir/$name" ] || return 1
  done
}

kib() { du -sk "$1" 2>/dev/null | cut -f1 || echo 0; }

if have_all "$DEST"; then
  echo "kube: $KEY in $DEST"
  exit 0
fi
if have_all "$CACHE"; then
  mkdir -p "$DEST"
  cp "${BINARIES[@]/#/$CACHE/}" "$DEST/"
  echo "kube: $KEY copied from $CACHE"
  exit 0
fi

gomodcache="$(go env GOMODCACHE)"
gocache="$(go env GOCACHE)"
mod_before="$(kib "$gomodcache")"
build_before="$(kib "$gocache")"
start="$(date +%s)"

mkdir -p "$CACHE"
# -trimpath and no VCS stamping: the binaries do not depend on where the repository is cloned. The
# version is stamped as Kubernetes' own build does (hack/lib/version.sh), so the server reports
# v1.35.4 (helm checks charts' kubeVersion against it).
minor="${KUBE_VERSION#v1.}"
version_pkg="k8s.io/component-base/version"
ldflags="-s -X $version_pkg.gitVersion=$KUBE_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=${minor%%.*}"
ldflags="$ldflags -X $version_pkg.gitTreeState=clean"
gcflags="all=-N -l"
(cd "$ROOT/scripts/kube" && go build -trimpath -gcflags="$gcflags" -ldflags="$ldflags" -o "$CACHE/" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager)
(cd "$ROOT/scripts/kube/etcd" && go build -trimpath -gcflags="$gcflags" -ldflags=-s -o "$CACHE/etcd" .)
mkdir -p "$DEST"
cp "${BINARIES[@]/#/$CACHE/}" "$DEST/"

elapsed="$(($(date +%s) - start))"
mod_added="$(($(kib "$gomodcache") - mod_before))"
build_added="$(($(kib "$gocache") - build_before))"
binaries="$(kib "$CACHE")"
echo "kube: built $KEY in $DEST"
echo "kube: cold build ${elapsed}s; disk added: module cache $((mod_added / 1024)) MiB," \
  "build cache $((build_added / 1024)) MiB, binaries $((binaries / 1024)) MiB (twice: $CACHE and $DEST)"
