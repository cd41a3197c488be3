#!/usr/bin/env bash
# Prints start-up, throughput and memory figures of the shim on this machine
# (a benchmark, not a test: it asserts nothing). Everything runs in private
# containerds under /tmp; nothing is left behind.
#
# Usage: scripts/bench.sh [STARTS]   (STARTS: cold starts per row, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
starts=${1:-10}
runtime=io.containerd.wasmtime-custom.v1

scripts/install-prerequisites.sh >/dev/null
cargo build --release -q -p containerd-shim-wasmtime-custom
cargo xtask images >/dev/null

dirs=()
cleanup() { for d in "${dirs[@]}"; do scripts/containerd.sh stop "$d"; rm -rf "$d"; done; }
trap cleanup EXIT
new_containerd() { # version -> sets $dir
  dir=$(mktemp -d /tmp/wtc-bench.XXXXXX); dirs+=("$dir")
  scripts/containerd.sh start "$dir" "$1" >/dev/null
}
ctr() { scripts/containerd.sh ctr "$dir" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ctr run -d, then curl /healthz until 200; prints the milliseconds taken.
start_ms() { # image id port [ctr run flags...]
  local image=$1 id=$2 port=$3 t0; shift 3
  t0=$(now_ms)
  ctr run -d --net-host --runtime "$runtime" "$@" --env "WASMTIME_CUSTOM_LISTEN=127.0.0.1:$port" \
    "$image" "$id" >/dev/null
  until curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; do sleep 0.005; done
  echo $(($(now_ms) - t0))
}
stop_task() { ctr tasks kill -s SIGKILL "$1" >/dev/null 2>&1 || true
  until ctr tasks delete "$1" >/dev/null 2>&1; do sleep 0.05; done
  ctr containers delete "$1" >/dev/null; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
row() { printf '%-58s %10s\n' "$1" "$2"; }

port=18700
echo "cold start: ctr run -d to first 200 on /healthz, median of $starts (ms)"
new_containerd 1.6; ctr images import target/images/app.tar >/dev/null
plain=$(for i in $(seq "$starts"); do start_ms localhost/wasmtime-custom/app:latest "p$i" $port; stop_task "p$i"; done | median)
row "plain image, containerd 1.6.20 (compiled at every start)" "$plain"
plain_dir=$dir

first=$(for i in $(seq "$starts"); do
  new_containerd 1.7; ctr images import --all-platforms target/images/app-wasm.tar >/dev/null
  start_ms localhost/wasmtime-custom/app:wasm first $port --platform wasip1/wasm; stop_task first
  # (a subshell: the EXIT trap of the script does not see this one)
  scripts/containerd.sh stop "$dir"; rm -rf "$dir"
done | median)
row "wasm-layer image, containerd 1.7.24, first start (compiles)" "$first"
new_containerd 1.7; ctr images import --all-platforms target/images/app-wasm.tar >/dev/null
start_ms localhost/wasmtime-custom/app:wasm warm $port --platform wasip1/wasm >/dev/null 2>&1; stop_task warm
cached=$(for i in $(seq "$starts"); do start_ms localhost/wasmtime-custom/app:wasm "c$i" $port --platform wasip1/wasm; stop_task "c$i"; done | median)
row "wasm-layer image, containerd 1.7.24, cached artifact" "$cached"
awk -v a="$plain" -v b="$cached" 'BEGIN { printf "%-58s %10.2f\n", "ratio plain / cached", a / b }'

echo
dir=$plain_dir
start_ms localhost/wasmtime-custom/app:latest served $port >/dev/null
echo "throughput: wrk -t2 -c32 -d10s http://127.0.0.1:$port/healthz (plain image, containerd 1.6)"
wrk -t2 -c32 -d10s "http://127.0.0.1:$port/healthz" | grep -E "Requests/sec|Latency|requests in"

echo
echo "memory of one serving container (all processes named after it, after the wrk run)"
rss=0; pss=0
for pid in $(pgrep -f -- "-id served -address"); do
  rss=$((rss + $(awk '/^Rss:/ { print $2 }' "/proc/$pid/smaps_rollup")))
  pss=$((pss + $(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")))
  printf '  pid %-8s %-26s RSS %6s KiB\n' "$pid" "$(ps -o args= -p "$pid" | cut -c1-26)" \
    "$(awk '/^Rss:/ { print $2 }' "/proc/$pid/smaps_rollup")"
done
row "total RSS (KiB)" "$rss"
row "total PSS (KiB)" "$pss"
row "shim binary (bytes)" "$(stat -c %s target/release/containerd-shim-wasmtime-custom-v1)"
row "app.wasm (bytes)" "$(stat -c %s target/wasm32-wasip2/release/app.wasm)"
stop_task served
