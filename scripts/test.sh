#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing,
# builds the shim and the images (for amd64 and arm64 nodes), and runs every
# test (unit tests, the end-to-end tests under private containerd 1.6, 1.7
# and 2.1, a local registry, and the arm64 binaries under qemu-user).
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prerequisites.sh
# One release build of the whole workspace serves the binaries (shim,
# installer) and the tests: same profile and features, so the test step
# does not build wasmtime a second time.
cargo build --release --workspace
cargo xtask images
# The installer's image and the binaries for both node architectures
# (arm64 cross-compiled once; the arm64 tests run them under qemu-user).
cargo xtask installer-image
cargo xtask dist
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
