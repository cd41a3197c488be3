#!/usr/bin/env bash
# Starts or stops a private containerd: its own config, root, state and socket
# under DIR, with the wasmtime-custom shim on its PATH. It never touches the
# system's containerd.
#
# Usage:
#   scripts/containerd.sh start DIR [VERSION]   start it: 1.6 (default, Debian 12's),
#                                              1.7 or 2.1 (unpacked privately);
#                                              prints the socket path
#   scripts/containerd.sh restart DIR          stop containerd (not its tasks) and
#                                              start it again as before
#   scripts/containerd.sh stop DIR             kill its tasks, stop it, unmount
#   scripts/containerd.sh ctr DIR ARGS...      run the matching ctr against it
#   scripts/containerd.sh bin VERSION          print the folder of that version's binaries
#
# Environment (for start):
#   WASMTIME_CUSTOM_SHIM_DIR   folder put first on containerd's PATH, holding
#                              containerd-shim-wasmtime-custom-v1
#                              (default: target/release of this checkout)
#   CONTAINERD_CONFIG_FILE     use this config instead of writing DIR/config.toml
#                              (it must set its own root, state and grpc address)
#   CONTAINERD_SOCKET          that config's grpc address (with CONTAINERD_CONFIG_FILE)
#   WASMTIME_CUSTOM_CACHE_DIR  the shims' compile cache (default: DIR/wasmtime-custom-cache)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
dir=${2:-}
usage="usage: scripts/containerd.sh start DIR [1.6|1.7|2.1] | restart DIR | stop DIR | ctr DIR ARGS... | bin VERSION"
[[ -n "$cmd" && -n "$dir" ]] || { echo "$usage" >&2; exit 2; }

bin_dir() {
  case "$1" in
    1.6) echo /usr/bin ;;
    1.7) "$root/scripts/fetch-containerd.sh" trixie ;;
    2.1) "$root/scripts/fetch-containerd.sh" sid ;;
    *) echo "containerd.sh: unknown version $1 (use 1.6, 1.7 or 2.1)" >&2; exit 2 ;;
  esac
}

if [[ $cmd == bin ]]; then
  bin_dir "$dir"
  exit 0
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$(cat "$dir/socket" 2>/dev/null || echo "$dir/containerd.sock")

ctr_bin() {
  local version
  version=$(cat "$dir/version" 2>/dev/null || echo 1.6)
  echo "$(bin_dir "$version")/ctr"
}

start() {
  local version=${1:-1.6} shim_dir config
  shim_dir=${WASMTIME_CUSTOM_SHIM_DIR:-$root/target/release}
  if [[ -z ${WASMTIME_CUSTOM_SHIM_DIR:-} && ! -x "$shim_dir/containerd-shim-wasmtime-custom-v1" ]]; then
    echo "containerd.sh: no shim in $shim_dir; build it: cargo build --release -p containerd-shim-wasmtime-custom" >&2
    exit 1
  fi
  if [[ -f "$dir/containerd.pid" ]] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
    echo "containerd.sh: a containerd already runs for $dir (pid $(cat "$dir/containerd.pid"))" >&2
    exit 1
  fi
  if [[ -n ${CONTAINERD_CONFIG_FILE:-} ]]; then
    config=$CONTAINERD_CONFIG_FILE
    sock=${CONTAINERD_SOCKET:?CONTAINERD_SOCKET must name the socket of CONTAINERD_CONFIG_FILE}
  else
    config="$dir/config.toml"
    sock="$dir/containerd.sock"
    cat >"$config" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
# Kubernetes' CRI is not needed to drive containers with ctr.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$sock"

[debug]
  level = "info"
TOML
  fi
  echo "$version" >"$dir/version"
  echo "$config" >"$dir/config-path"
  echo "$sock" >"$dir/socket"
  echo "$shim_dir" >"$dir/shim-dir"
  launch
  echo "$sock"
}

# Starts containerd as recorded in DIR and waits until it answers.
launch() {
  local version bins config shim_dir
  version=$(cat "$dir/version")
  bins=$(bin_dir "$version")
  config=$(cat "$dir/config-path")
  shim_dir=$(cat "$dir/shim-dir")
  # The shims' compile cache stays in DIR too (a node's is
  # /var/lib/wasmtime-custom/cache), unless the caller names one.
  WASMTIME_CUSTOM_CACHE_DIR="${WASMTIME_CUSTOM_CACHE_DIR:-$dir/wasmtime-custom-cache}" \
    PATH="$shim_dir:$bins:$PATH" nohup "$bins/containerd" --config "$config" \
    >>"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  local deadline=$((SECONDS + 30))
  until "$bins/ctr" -a "$sock" version >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
      echo "containerd.sh: containerd $version exited at start; its log ($dir/containerd.log):" >&2
      tail -n 30 "$dir/containerd.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "containerd.sh: containerd $version did not answer on $sock within 30 s; see $dir/containerd.log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# Stops the containerd process only; its shims and tasks keep running.
stop_daemon() {
  local pid
  [[ -f "$dir/containerd.pid" ]] || return 0
  pid=$(cat "$dir/containerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/containerd.pid"
}

stop() {
  local ctr
  ctr=$(ctr_bin)
  if [[ -S "$sock" ]]; then
    for ns in $("$ctr" -a "$sock" namespaces ls -q 2>/dev/null); do
      for task in $("$ctr" -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        "$ctr" -a "$sock" -n "$ns" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
        "$ctr" -a "$sock" -n "$ns" tasks delete -f "$task" >/dev/null 2>&1 || true
      done
      for c in $("$ctr" -a "$sock" -n "$ns" containers ls -q 2>/dev/null); do
        "$ctr" -a "$sock" -n "$ns" containers delete "$c" >/dev/null 2>&1 || true
      done
    done
  fi
  # Shims name their containerd's socket on their command line.
  pkill -KILL -f -- "-address $sock" 2>/dev/null || true
  stop_daemon
  # Anything still mounted under DIR (rootfs, shm) goes, deepest first.
  local mounts
  mounts=$(awk -v prefix="$dir/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r)
  for m in $mounts; do
    umount -l "$m" 2>/dev/null || true
  done
}

case "$cmd" in
  start) start "${3:-1.6}" ;;
  restart) stop_daemon; launch ;;
  stop) stop ;;
  ctr) shift 2; exec "$(ctr_bin)" -a "$sock" "$@" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
