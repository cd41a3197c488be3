#!/usr/bin/env bash
# The main job, for now: serves the order app under the wasmtime-custom shim
# in a private containerd and exercises it with curl, then cleans up.
# (The full order flow with the Dapr stand-in comes with its own issue.)
#
# Usage: scripts/serve-app.sh [1.6|1.7]
#   1.6 (default): Debian 12's containerd, plain image (rootfs /app.wasm)
#   1.7: containerd 1.7.24, wasm-layer image, compiled once and cached
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.6}
port=${PORT:-8080}

scripts/install-prerequisites.sh
cargo build --release -p containerd-shim-wasmtime-custom
cargo xtask images >/dev/null

dir=$(mktemp -d /tmp/wasmtime-custom.XXXXXX)
cleanup() { scripts/containerd.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT
scripts/containerd.sh start "$dir" "$version" >/dev/null
ctr() { scripts/containerd.sh ctr "$dir" "$@"; }

if [[ $version == 1.6 ]]; then
  image=localhost/wasmtime-custom/app:latest
  ctr images import target/images/app.tar
  platform=()
else
  image=localhost/wasmtime-custom/app:wasm
  ctr images import --all-platforms target/images/app-wasm.tar
  platform=(--platform wasip1/wasm)
fi

echo "== ctr run --runtime io.containerd.wasmtime-custom.v1 $image (on 127.0.0.1:$port)"
ctr run --rm --net-host "${platform[@]}" --runtime io.containerd.wasmtime-custom.v1 \
  --env "WASMTIME_CUSTOM_LISTEN=127.0.0.1:$port" --env "DAPR_URL=http://127.0.0.1:1" \
  "$image" order-app >"$dir/app.log" 2>&1 &
ctr_pid=$!
deadline=$((SECONDS + 30))
until curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; do
  if ! kill -0 "$ctr_pid" 2>/dev/null || ((SECONDS > deadline)); then
    echo "the app did not come up; its output:" >&2; cat "$dir/app.log" >&2; exit 1
  fi
  sleep 0.1
done

failed=0
check() { # expected-status description curl-args...
  local expected=$1 what=$2 status; shift 2
  status=$(curl -s -o "$dir/body" -w '%{http_code}' "$@")
  printf '%-58s %s  %s\n' "$what" "$status" "$(head -c 100 "$dir/body")"
  [[ $status == "$expected" ]] || { echo "   expected $expected" >&2; failed=1; }
}
u="http://127.0.0.1:$port"
check 200 "GET /healthz" "$u/healthz"
check 200 "OPTIONS /q-order-ingress (Dapr's start-up probe)" -X OPTIONS "$u/q-order-ingress"
check 400 "POST /q-order-ingress, malformed order" -d '{"orderId":1,"delivery":"Drone"}' "$u/q-order-ingress"
check 503 "POST /q-order-ingress, Dapr not running here" -d '{"orderId":1,"delivery":"Express"}' "$u/q-order-ingress"
check 404 "GET /nope" "$u/nope"

echo "== SIGTERM (what Kubernetes sends): the shim drains and exits"
ctr tasks kill -s SIGTERM order-app
wait "$ctr_pid" && echo "exit code 0" || { echo "exit code $?" >&2; failed=1; }
echo "== the container's log"
cat "$dir/app.log"
exit "$failed"
