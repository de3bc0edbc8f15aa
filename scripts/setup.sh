#!/usr/bin/env bash
# Installs what kvtier needs on a Debian 12 machine. Safe to run again: it installs only what is missing.
# Usage: scripts/setup.sh            (uses sudo when not root)
set -euo pipefail

packages=(
  build-essential g++ cmake ninja-build pkg-config git
  liburing-dev librocksdb-dev libhiredis-dev capnproto libcapnp-dev
  liblz4-dev libxxhash-dev zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev
  redis-server redis-tools pybind11-dev python3-dev python3-venv fio
  clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
