#!/usr/bin/env bash
# Unpacks one Debian package (any suite, any architecture) into
# target/debian/NAME/root without installing it or touching the system's apt
# set-up, and prints that root. Does nothing if it is already there.
#
# Usage: scripts/fetch-deb.sh SUITE PACKAGE[:ARCH] NAME
#   e.g. scripts/fetch-deb.sh trixie qemu-user qemu-trixie
#        scripts/fetch-deb.sh bookworm busybox-static:arm64 busybox-arm64
set -euo pipefail

suite=${1:?usage: scripts/fetch-deb.sh SUITE PACKAGE[:ARCH] NAME}
package=${2:?usage: scripts/fetch-deb.sh SUITE PACKAGE[:ARCH] NAME}
name=${3:?usage: scripts/fetch-deb.sh SUITE PACKAGE[:ARCH] NAME}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/target/debian/$name"

if [[ ! -f "$dir/unpacked" ]]; then
  # The Debian mirror this machine's apt already uses.
  mirror=$(apt-get indextargets --format '$(REPO_URI)' | grep -m1 '/debian/$' || true)
  if [[ -z "$mirror" ]]; then
    echo "fetch-deb: no Debian mirror found in apt's sources (apt-get indextargets)" >&2
    exit 1
  fi
  arch=${package#*:}
  [[ "$arch" == "$package" ]] && arch=$(dpkg --print-architecture)
  rm -rf "$dir"
  mkdir -p "$dir/lists/partial"
  echo "deb [arch=$arch] $mirror $suite main" >"$dir/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$dir/lists" -o "APT::Get::List-Cleanup=0"
        -o "APT::Architectures::=$arch")
  apt-get "${opts[@]}" -qq update
  (cd "$dir" && apt-get "${opts[@]}" -qq download "$package")
  dpkg -x "$dir"/*.deb "$dir/root"
  touch "$dir/unpacked"
fi
echo "$dir/root"
