#!/usr/bin/env bash
# Makes grpcio (PyPI) importable for the runtime tier, the containerd demo and the runtime benchmark, without
# touching the system's Python: it is installed once into DIR (default .build/runtime-py). Prints DIR, to be put
# on PYTHONPATH.
set -euo pipefail
dir=${1:-.build/runtime-py}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if ! PYTHONPATH=$dir python3 -c 'import grpc' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends python3-pip >/dev/null
  fi
  pip=(python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target "$dir")
  # Debian's pip refuses installs into an "externally managed" Python unless told; --target only writes $dir.
  "${pip[@]}" grpcio >&2 2>/dev/null || "${pip[@]}" --break-system-packages grpcio >&2
  PYTHONPATH=$dir python3 -c 'import grpc' >&2
fi
printf '%s\n' "$dir"
