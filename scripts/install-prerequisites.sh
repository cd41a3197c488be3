#!/usr/bin/env bash
# Installs what building and testing wasmtime-custom needs, idempotently:
# Debian packages (with arm64 multiarch for cross builds), the wasm32-wasip2
# and aarch64 Rust targets, private copies of containerd 1.7 and 2.1, arm64
# busybox and qemu-user (unpacked from Debian into target/, never
# installed), and kubernetes-validate and componentize-py from PyPI.
#
# Usage: scripts/install-prerequisites.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
packages=(containerd runc protobuf-compiler libseccomp-dev pkg-config curl wrk hyperfine busybox-static containernetworking-plugins
  # A real OCI registry on loopback and the tool that pushes to it.
  docker-registry skopeo
  # Cross builds for arm64 nodes: the C toolchain and libseccomp for aarch64.
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64)

# libseccomp-dev:arm64 comes from Debian's multiarch archive.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for target in wasm32-wasip2 aarch64-unknown-linux-gnu; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done
# CI checks the formatting and the lints.
for component in rustfmt clippy; do
  rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

# containerd 1.7 (wasm-layer images need >= 1.7.7; Debian 12 ships 1.6.20)
# and 2.1 (config version 3), for the installer's and the shim's tests.
"$root/scripts/fetch-containerd.sh" trixie >/dev/null
"$root/scripts/fetch-containerd.sh" sid >/dev/null

# For arm64 nodes: busybox for the installer's arm64 image (unpacked, never
# installed: it would replace this machine's busybox), and trixie's
# qemu-user 10 to run arm64 binaries here (Debian 12's qemu 7.2 cannot run
# the shim: it lacks PR_SET_CHILD_SUBREAPER and runs out of memory on the
# engine's address-space reservation).
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
"$root/scripts/fetch-deb.sh" "$codename" busybox-static:arm64 busybox-arm64 >/dev/null
"$root/scripts/fetch-deb.sh" trixie qemu-user qemu-trixie >/dev/null

# Python tools from PyPI, for the python3 first on PATH (pyenv's here). A
# Debian system Python refuses `pip install` (PEP 668, "externally
# managed"); PIP_BREAK_SYSTEM_PACKAGES lets root's pip install into
# /usr/local (on PATH, never over a file of Debian's packages). Other
# Pythons ignore the variable.
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  }
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "$@"
  # Under pyenv a new console script needs its shim.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
}

# Offline validation of the Kubernetes manifests against the API schemas.
command -v kubernetes-validate >/dev/null || pip_install kubernetes-validate
command -v kubernetes-validate >/dev/null || {
  echo "install-prerequisites: kubernetes-validate is not on PATH after pip install" >&2; exit 1; }
# The benchmark's large component (large-guest/, built by `cargo xtask
# images`): this exact version, the one xtask checks for.
componentize_py=0.25.1
if [[ "$(componentize-py --version 2>/dev/null)" != "componentize-py $componentize_py" ]]; then
  pip_install "componentize-py==$componentize_py"
fi
[[ "$(componentize-py --version 2>/dev/null)" == "componentize-py $componentize_py" ]] || {
  echo "install-prerequisites: componentize-py $componentize_py is not on PATH after pip install" >&2; exit 1; }
# kubectl (for `kubectl kustomize`) comes with the machine image; there is no
# apt source for it here, so say so instead of failing later in a test.
command -v kubectl >/dev/null || { echo "install-prerequisites: kubectl is missing (needed for kubectl kustomize)" >&2; exit 1; }
echo "prerequisites ready"
