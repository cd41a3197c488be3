#!/usr/bin/env bash
# The main job, from a fresh machine: installs what is missing, builds, starts
# a private containerd on a fake node that gets the shim through the node
# installer, runs the order flow (distributor, receiver-express and
# receiver-standard on the wasmtime-custom runtime, connected by the local
# bindings stand-in for Dapr), verifies every blob and prints the report.
# Exits 1 if any order is lost or changed, 2 if the flow could not run.
# Nothing is left behind, and no system containerd is touched.
#
# Usage: scripts/order-flow.sh [options of `order-flow run`]
#   e.g. --flavor native (the native baseline under runc), -n 300, --poison 5
#   (all options: target/release/order-flow run --help)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-prerequisites.sh
# The whole workspace, as scripts/test.sh builds it: the shim, the node
# installer, the native baseline and order-flow itself, with one feature set.
cargo build --release --workspace
cargo xtask images >/dev/null
exec target/release/order-flow run --json target/order-flow.json "$@"
