#!/usr/bin/env bash
# `kvtier bench e2e`: time to first token with and without a cached prefix, transformers on
# CPU (python/kvtier/bench_e2e.py; --help lists the options). Uses the venv that
# `scripts/test.sh python` makes (build-python/venv), creating it when missing.
#   scripts/kvtier bench e2e [--lengths 1024,2048,4096,8192] [--tier host|nvme] [--json] [--out f.json]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh >&2
venv=build-python/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check torch transformers >&2
fi
"$venv/bin/pip" install -q --disable-pip-version-check ./python >&2  # incremental after the first build
export KVTIER_TEST_DIR=${KVTIER_TEST_DIR:-$root/build-test-files}    # --tier nvme: a real disk, not tmpfs
exec "$venv/bin/python" -m kvtier.bench_e2e "$@"
