#!/usr/bin/env bash
# Installs what building and testing wasmtime-custom needs, idempotently:
# Debian packages, the wasm32-wasip2 Rust target, and a private copy of
# containerd 1.7 (unpacked from Debian trixie into target/, never installed).
#
# Usage: scripts/install-prerequisites.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
packages=(containerd runc protobuf-compiler libseccomp-dev pkg-config curl wrk hyperfine)

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

# containerd 1.7 (wasm-layer images need >= 1.7.7; Debian 12 ships 1.6.20).
"$root/scripts/fetch-containerd.sh" trixie >/dev/null
echo "prerequisites ready"
