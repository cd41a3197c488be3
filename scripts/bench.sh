#!/usr/bin/env bash
# The benchmark (prints figures, asserts nothing): the Wasm app on the
# wasmtime-custom shim against the same order logic as a native server under
# runc, side by side in one run: wrk on /healthz and /q-order-ingress, cold
# starts, density (PSS of 20 instances), sizes, and the full order flow.
# Prints a table and writes target/bench/bench.txt and bench.json.
#
# Usage: scripts/bench.sh [options of `order-flow bench`]
#   e.g. --starts 10 --repeats 3 --instances 20 -n 10000 (the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prerequisites.sh >/dev/null
cargo build --release --workspace
cargo xtask images >/dev/null
exec target/release/order-flow bench "$@"
