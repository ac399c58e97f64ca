#!/usr/bin/env bash
# Build the chart tools of the field from their Go modules, at pinned releases, into .tools/:
#   helm-unittest (bin/helm-unittest, and as the helm plugin "unittest" under helm-plugins/)
#   chart-testing's ct (bin/ct; the repository's ct.yaml names the lint config and Chart.yaml schema)
# Each build is kept in ${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents/<tool>-<version>/, so a fresh clone
# on the same machine copies it in a second instead of compiling for minutes. Idempotent: a rerun
# with everything in place only prints the versions.
#
# Usage: scripts/build-chart-tools.sh [DEST]   (DEST defaults to .tools at the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.tools}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/azp-agents"

UNITTEST_MODULE="github.com/helm-unittest/helm-unittest"
UNITTEST_VERSION="v1.1.2"
CT_MODULE="github.com/helm/chart-testing/v3"
CT_VERSION="v3.14.0"

# Print the module's source directory in the Go module cache, downloading it through the proxy.
module_dir() {
  (cd "$(mktemp -d)" && go mod download -json "$1@$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
}

# Build package $3 of module $1 at version $2 into $4, with linker flags $5. The build runs in a
# copy of the module so that its own go.mod (replace directives included) and go.sum pin every
# dependency, which `go install module@version` refuses when the module has replace directives.
build_module() {
  local module="$1" version="$2" package="$3" out="$4" ldflags="$5" src work
  src="$(module_dir "$module" "$version")"
  work="$(mktemp -d)"
  cp -r "$src/." "$work"
  chmod -R u+w "$work"
  # Optimizations and inlining off: the tools run for seconds, and the cold build is faster (build-kube.sh).
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -gcflags="all=-N -l" -ldflags "$ldflags" -o "$out" "$package")
  rm -rf "$work"
}

unittest_cache="$CACHE/helm-unittest-$UNITTEST_VERSION"
if [ ! -x "$unittest_cache/untt" ]; then
  mkdir -p "$unittest_cache"
  build_module "$UNITTEST_MODULE" "$UNITTEST_VERSION" ./cmd/helm-unittest "$unittest_cache/untt.tmp" \
    "-X $UNITTEST_MODULE/internal/build.version=${UNITTEST_VERSION#v}"
  install -m 0644 "$(module_dir "$UNITTEST_MODULE" "$UNITTEST_VERSION")/plugin.yaml" "$unittest_cache/plugin.yaml"
  mv "$unittest_cache/untt.tmp" "$unittest_cache/untt"
fi

ct_cache="$CACHE/ct-$CT_VERSION"
if [ ! -x "$ct_cache/ct" ]; then
  mkdir -p "$ct_cache"
  build_module "$CT_MODULE" "$CT_VERSION" ./ct "$ct_cache/ct.tmp" "-X $CT_MODULE/ct/cmd.Version=$CT_VERSION"
  mv "$ct_cache/ct.tmp" "$ct_cache/ct"
fi

# Copy $1 to $2 unless an identical file is there already (keeps a rerun from touching anything).
place() {
  mkdir -p "$(dirname "$2")"
  cmp -s "$1" "$2" || install -m "$3" "$1" "$2"
}

place "$unittest_cache/untt" "$DEST/bin/helm-unittest" 0755
# The plugin: helm runs the command plugin.yaml names for this platform (untt-<os>-<arch>, where
# the release archives call darwin "macos"), so the binary goes there.
goos="$(go env GOOS)"
plugin="$DEST/helm-plugins/unittest"
place "$unittest_cache/plugin.yaml" "$plugin/plugin.yaml" 0644
place "$unittest_cache/untt" "$plugin/untt-${goos/darwin/macos}-$(go env GOARCH)" 0755
place "$ct_cache/ct" "$DEST/bin/ct" 0755

# helm-unittest has no version flag: its plugin.yaml carries the release it was built from.
"$DEST/bin/helm-unittest" --help >/dev/null
echo "helm-unittest: v$(sed -n 's/^version: "\(.*\)"$/\1/p' "$plugin/plugin.yaml")"
echo "ct: $("$DEST/bin/ct" version | sed -n 's/^Version:[[:space:]]*//p')"
