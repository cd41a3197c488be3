#!/usr/bin/env bash
# Unpacks the containerd of a Debian suite (trixie: 1.7.x, sid: 2.x) into
# target/containerd/SUITE without touching the system's apt set-up, and
# prints the folder holding its binaries. Does nothing if it is already there.
#
# Usage: scripts/fetch-containerd.sh SUITE
set -euo pipefail

suite=${1:?usage: scripts/fetch-containerd.sh SUITE (trixie or sid)}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/target/containerd/$suite"
bin="$dir/root/usr/bin"

if [[ ! -x "$bin/containerd" ]]; then
  # The Debian mirror this machine's apt already uses.
  mirror=$(apt-get indextargets --format '$(REPO_URI)' | grep -m1 '/debian/$' || true)
  if [[ -z "$mirror" ]]; then
    echo "fetch-containerd: no Debian mirror found in apt's sources (apt-get indextargets)" >&2
    exit 1
  fi
  mkdir -p "$dir/lists/partial"
  echo "deb $mirror $suite main" >"$dir/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$dir/lists" -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" -qq update
  rm -f "$dir"/containerd_*.deb
  (cd "$dir" && apt-get "${opts[@]}" -qq download containerd)
  dpkg -x "$dir"/containerd_*.deb "$dir/root"
  "$bin/containerd" --version >&2
fi
echo "$bin"
