#!/usr/bin/env bash
# Installs what building and testing wasmtime-custom needs, idempotently:
# Debian packages, the wasm32-wasip2 Rust target, private copies of
# containerd 1.7 and 2.1 (unpacked from Debian trixie and sid into target/,
# never installed), and kubernetes-validate from PyPI.
#
# Usage: scripts/install-prerequisites.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
packages=(containerd runc protobuf-compiler libseccomp-dev pkg-config curl wrk hyperfine busybox-static containernetworking-plugins)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# CI checks the formatting and the lints.
for component in rustfmt clippy; do
  rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

# containerd 1.7 (wasm-layer images need >= 1.7.7; Debian 12 ships 1.6.20)
# and 2.1 (config version 3), for the installer's and the shim's tests.
"$root/scripts/fetch-containerd.sh" trixie >/dev/null
"$root/scripts/fetch-containerd.sh" sid >/dev/null

# Offline validation of the Kubernetes manifests against the API schemas.
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet kubernetes-validate
  # Under pyenv a new console script needs its shim.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
command -v kubernetes-validate >/dev/null || {
  echo "install-prerequisites: kubernetes-validate is not on PATH after pip install" >&2; exit 1; }
# kubectl (for `kubectl kustomize`) comes with the machine image; there is no
# apt source for it here, so say so instead of failing later in a test.
command -v kubectl >/dev/null || { echo "install-prerequisites: kubectl is missing (needed for kubectl kustomize)" >&2; exit 1; }
echo "prerequisites ready"
