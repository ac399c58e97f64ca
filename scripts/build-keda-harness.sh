#!/usr/bin/env bash
# Build the benchmark's harness around KEDA's azure-pipelines scaler (benchmarks/keda) into
# .tools/bin/keda-harness. For the benchmarks only: `make test` never runs this (a smoke test skips
# when the binary is absent). The binary is kept in ${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents/, keyed
# by the checksum of the harness's sources, go.mod, go.sum and this script; a rerun copies it.
#
# KEDA's pkg/scalers holds all of KEDA's scalers in one Go package, so importing it compiles every
# scaler's cloud SDK (about 3,000 packages). The harness needs only NewAzurePipelinesScaler, so it is
# built against a copy of the pinned KEDA module, taken from the module cache (checked against
# go.sum), with the other scalers' *_scaler.go files left out of pkg/scalers: about 900 packages.
# Kept, from KEDA's source unchanged: the azure-pipelines scaler, the package's shared scaler.go, and
# the azure-queue scaler, which declares the package's externalMetricType the former uses.
#
# Usage: scripts/build-keda-harness.sh [DEST]   (DEST defaults to .tools at the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.tools}"
SRC="$ROOT/benchmarks/keda"
KEDA_MODULE="github.com/kedacore/keda/v2"
key="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go "${BASH_SOURCE[0]}" | cksum | cut -d' ' -f1)"
cached="${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents/keda-harness-$key/keda-harness"

if [ ! -x "$cached" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$SRC" && go mod download "$KEDA_MODULE")
  keda_dir="$(cd "$SRC" && go list -mod=readonly -m -f '{{.Dir}}' "$KEDA_MODULE")"
  cp -r "$keda_dir" "$work/keda"
  chmod -R u+w "$work/keda"
  find "$work/keda/pkg/scalers" -maxdepth 1 -name '*_scaler.go' \
    ! -name azure_pipelines_scaler.go ! -name azure_queue_scaler.go -delete
  mkdir -p "$work/harness" "$(dirname "$cached")"
  cp "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go "$work/harness/"
  (
    cd "$work/harness"
    go mod edit -replace "$KEDA_MODULE=../keda"
    CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$cached.tmp" .
  )
  mv "$cached.tmp" "$cached"
fi
mkdir -p "$DEST/bin"
cmp -s "$cached" "$DEST/bin/keda-harness" || install -m 0755 "$cached" "$DEST/bin/keda-harness"
echo "keda-harness: KEDA $(sed -n 's/^require github.com\/kedacore\/keda\/v2 //p' "$SRC/go.mod")"
