#!/usr/bin/env bash
# The shared library exports the C ABI (kvt_*) and nothing else of ours.
set -euo pipefail
lib="$1"
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}')
ours=$(echo "$exported" | grep -v -E '^(_init|_fini|_edata|_end|__bss_start)$' || true)
leaks=$(echo "$ours" | grep -v -E '^kvt_' || true)
count=$(echo "$ours" | grep -c -E '^kvt_' || true)
if [ -n "$leaks" ]; then
  echo "symbols exported beyond the C ABI:"; echo "$leaks" | head -20; exit 1
fi
if [ "$count" -lt 15 ]; then
  echo "expected the kvt_* C ABI to be exported, found $count symbols"; exit 1
fi
echo "exports ok: $count kvt_* symbols, nothing else"
