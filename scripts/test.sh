#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing,
# builds the shim and the images, and runs every test (unit tests and the
# end-to-end tests under private containerd 1.6 and 1.7).
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prerequisites.sh
# One release build serves the shim binary and the tests (no second,
# debug build of wasmtime).
cargo build --release -p containerd-shim-wasmtime-custom
cargo xtask images
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
