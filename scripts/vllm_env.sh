#!/usr/bin/env bash
# A Python venv with vLLM and the kvtier package, for the vLLM connector (kvtier.vllm) and
# its tests (python/tests/test_vllm_connector.py). Every version is pinned; run it again
# to reuse the venv (pip skips what is installed) and rebuild kvtier incrementally.
#   scripts/vllm_env.sh [VENV]            (default /tmp/venv-vllm; may be inside the checkout,
#                                          as scripts/test.sh's build-vllm/venv)
# Environment:
#   KVTIER_BUILD_JOBS   parallel compile jobs for the kvtier extension (default: nproc)
#   PYTHON              interpreter for the venv (default python3; vLLM 0.32 needs 3.11+)
# Then:  VENV/bin/python -m pytest python/tests/test_vllm_connector.py -q
#
# Size: vLLM's wheel pulls the CUDA build of torch and NVIDIA's CUDA wheels (about 4.3 GB
# downloaded, 8.4 GB installed) even on a machine without a GPU; see docs/vllm.md.
set -euo pipefail
venv=$(realpath -m "${1:-/tmp/venv-vllm}")  # absolute, before the cd below
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python=${PYTHON:-python3}
jobs=${KVTIER_BUILD_JOBS:-$(nproc)}

# Pins: vLLM and the versions it resolved to when this connector was tested (torch is
# pinned exactly by vLLM itself; transformers must satisfy vLLM's range).
vllm_pins=("vllm==0.32.0" "torch==2.13.0" "transformers==5.19.0")
test_pins=("pytest==9.2.0")
# kvtier's build backend, in the venv: built without pip's isolation, so the CMake build folder
# survives between runs (scikit-build-core clears its CMake cache, objects included, whenever
# the build runs from another isolated environment, i.e. on every isolated build).
build_pins=("scikit-build-core==1.1.2" "pybind11==3.1.0")

# The kvtier extension links the Debian libraries the core needs (RocksDB, liburing, ...).
bash scripts/setup.sh

"$python" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"vllm_env: vLLM 0.32 needs Python 3.11 or newer; {sys.executable} is "
             f"{sys.version.split()[0]} (set PYTHON=python3.11)")
EOF

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "=== vllm_env: vLLM into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${vllm_pins[@]}" "${test_pins[@]}" "${build_pins[@]}"

# The kvtier package, built with CMake by scikit-build-core (python/pyproject.toml). Its own
# build folder, so this never races a `pip install ./python` of another venv (scripts/test.sh),
# and reruns rebuild only what changed.
echo "=== vllm_env: kvtier ($jobs compile jobs)"
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation \
  --config-settings=build-dir=../build-vllm/{wheel_tag} ./python

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import kvtier
print("vllm_env: vllm", md.version("vllm"), "torch", md.version("torch"), "kvtier", kvtier.__version__)
EOF
