#!/usr/bin/env bash
# A Python venv with SGLang's HiCache modules and the kvtier package, for the SGLang storage
# backend (kvtier.sglang) and its tests (python/tests/test_sglang_backend.py). Every version
# is pinned; run it again to reuse the venv (pip skips what is installed) and rebuild kvtier
# incrementally.
#   scripts/sglang_env.sh [VENV]          (default /tmp/venv-sglang; may be inside the checkout,
#                                          as scripts/test.sh's build-sglang/venv)
# Environment:
#   KVTIER_BUILD_JOBS   parallel compile jobs for the kvtier extension (default: nproc)
#   PYTHON              interpreter for the venv (default python3; SGLang 0.5.23 needs 3.10+)
# Then:  VENV/bin/python -m pytest python/tests/test_sglang_backend.py -q
#
# What it installs: sglang itself without its dependencies (--no-deps), plus only the
# packages that `import sglang.srt.mem_cache.hicache_storage`, `...storage.backend_factory`
# and `...pool_host.mha` / `.mla` need. The full `pip install sglang==0.5.23` would also pull
# flashinfer, sgl-kernel, flash-attn, DeepEP, cutlass-dsl, ... (CUDA kernels this backend and
# its tests never load). torch is PyPI's build, which brings NVIDIA's CUDA wheels even on a
# machine without a GPU; the HiCache modules import and run on the CPU. Figures: docs/sglang.md.
set -euo pipefail
venv=$(realpath -m "${1:-/tmp/venv-sglang}")  # absolute, before the cd below
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python=${PYTHON:-python3}
jobs=${KVTIER_BUILD_JOBS:-$(nproc)}

sglang_pin="sglang==0.5.23"
# torch, transformers, sentencepiece, compressed-tensors and apache-tvm-ffi: the exact pins
# of sglang 0.5.23's own requirements. The rest: what sglang's package imports at load time
# (sglang/__init__.py and sglang.srt.utils), at the versions they resolved to when tested.
dep_pins=(
  "torch==2.14.1" "torchvision==0.29.2" "transformers==5.19.0" "numpy==2.4.6"
  "sentencepiece==0.2.1" "compressed-tensors==0.18.0" "apache-tvm-ffi==0.1.11" "gguf==0.19.0"
  "aiohttp==3.14.5" "dill==0.4.1" "ipython==9.18.1" "msgspec==0.22.0" "orjson==3.13.0"
  "packaging==26.3" "pillow==13.0.0" "psutil==7.2.2" "pybase64==1.5.1" "pydantic==2.14.3"
  "pyzmq==27.3.0" "requests==2.34.2" "starlette==1.10.0" "tqdm==4.70.1"
)
test_pins=("pytest==9.2.0")
# kvtier's build backend, in the venv: built without pip's isolation, so the CMake build folder
# survives between runs (scikit-build-core clears its CMake cache, objects included, whenever
# the build runs from another isolated environment, i.e. on every isolated build).
build_pins=("scikit-build-core==1.1.2" "pybind11==3.1.0")

# The kvtier extension links the Debian libraries the core needs (RocksDB, liburing, ...).
bash scripts/setup.sh

"$python" - <<'EOF'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"sglang_env: SGLang 0.5.23 needs Python 3.10 or newer; {sys.executable} is "
             f"{sys.version.split()[0]} (set PYTHON=python3.11)")
EOF

t0=$(date +%s)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "=== sglang_env: $sglang_pin (HiCache modules only) into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${dep_pins[@]}" "${test_pins[@]}" "${build_pins[@]}"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "$sglang_pin"

# The kvtier package, built with CMake by scikit-build-core (python/pyproject.toml). Its own
# build folder, so this never races a `pip install ./python` of another venv (scripts/test.sh),
# and reruns rebuild only what changed.
echo "=== sglang_env: kvtier ($jobs compile jobs)"
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation \
  --config-settings=build-dir=../build-sglang/{wheel_tag} ./python

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import warnings

warnings.filterwarnings("ignore")  # sglang warns that its CUDA-only quantizers are off
import torch
import kvtier
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage  # noqa: F401
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: F401
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: F401
import kvtier.sglang  # noqa: F401

print("sglang_env: sglang", md.version("sglang"), "torch", torch.__version__,
      "(CUDA available: %s)" % torch.cuda.is_available(), "kvtier", kvtier.__version__)
EOF
echo "=== sglang_env: ready in $(( $(date +%s) - t0 ))s; $(du -sh "$venv" | cut -f1) in $venv"
