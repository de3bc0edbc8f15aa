#!/usr/bin/env bash
# Every test, from a fresh Debian 12 machine: installs what is missing, then for each
# stage configures, builds and runs ctest.
#   release  Release build with warnings as errors (build/)
#   asan     AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   tsan     ThreadSanitizer (build-tsan/)
#   fuzz     clang libFuzzer targets, each run for KVTIER_FUZZ_SECONDS (default 30) (build-fuzz/)
#   python   the Python package and the transformers end-to-end tests, in a venv (build-python/)
#   vllm     the vLLM connector's tests, in a venv with the pinned vLLM (scripts/vllm_env.sh:
#            build-vllm/venv, about 8.5 GB)
#   sglang   the SGLang backend's tests, in a venv with the pinned SGLang (scripts/sglang_env.sh:
#            build-sglang/venv, about 6 GB)
#   In these two stages a test module that cannot import its engine fails instead of skipping
#   (KVTIER_REQUIRE_ENGINE).
# Usage: scripts/test.sh [stage ...]
#   default: release asan tsan fuzz python, in that order; with CI=true (.ci/run) also
#   vllm sglang after them
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh

# NVMe tests need O_DIRECT: keep their files on the checkout's filesystem, not a tmpfs /tmp.
export KVTIER_TEST_DIR=${KVTIER_TEST_DIR:-$root/build-test-files}
mkdir -p "$KVTIER_TEST_DIR"

stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then
  stages=(release asan tsan fuzz python)
  [ "${CI:-}" != true ] || stages+=(vllm sglang)
fi
jobs=$(nproc)
fuzz_seconds=${KVTIER_FUZZ_SECONDS:-30}

configure_build_test() {  # dir, cmake args...
  local dir=$1; shift
  echo "=== $dir: configure"
  cmake -S . -B "$dir" -G Ninja -DKVTIER_WERROR=ON "$@" > "$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; return 1; }
  grep -E '^-- kvtier' "$dir.configure.log" || true
  echo "=== $dir: build"
  cmake --build "$dir" -j "$jobs"
  echo "=== $dir: test"
  (cd "$dir" && $CTEST_WRAP ctest --output-on-failure -j "$jobs" --timeout 900)
}

# The daemon load test (N client processes x M threads through one kvtierd server) runs
# for 60 s in the sanitizer stages, 5 s in the release one.
start=$(date +%s)
for stage in "${stages[@]}"; do
  t0=$(date +%s)
  CTEST_WRAP=""
  case "$stage" in
    release) configure_build_test build -DCMAKE_BUILD_TYPE=Release ;;
    asan)
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      export KVTIER_DAEMON_LOAD_SECONDS=${KVTIER_DAEMON_LOAD_SECONDS:-60}
      configure_build_test build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTIER_SANITIZE=address -DKVTIER_BUILD_BENCH=OFF ;;
    tsan)
      # TSan's shadow memory layout breaks with the high ASLR entropy of newer kernels;
      # running without address randomisation avoids "unexpected memory mapping".
      # RocksDB comes from Debian, not built with TSan: its internal synchronisation is
      # invisible, so reports from non-instrumented modules are ignored.
      export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1
      export KVTIER_DAEMON_LOAD_SECONDS=${KVTIER_DAEMON_LOAD_SECONDS:-60}
      CTEST_WRAP="setarch $(uname -m) -R"
      configure_build_test build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTIER_SANITIZE=thread -DKVTIER_BUILD_BENCH=OFF ;;
    fuzz)
      echo "=== build-fuzz: configure"
      cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
        -DCMAKE_CXX_COMPILER=clang++ -DKVTIER_FUZZ=ON -DKVTIER_SANITIZE=address -DKVTIER_BUILD_TESTS=OFF \
        -DKVTIER_BUILD_BENCH=OFF > build-fuzz.configure.log 2>&1 || { cat build-fuzz.configure.log; exit 1; }
      cmake --build build-fuzz -j "$jobs" --target radix_index_fuzz chunk_format_fuzz daemon_request_fuzz
      for f in radix_index_fuzz chunk_format_fuzz daemon_request_fuzz; do
        echo "=== fuzz: $f for ${fuzz_seconds}s"
        mkdir -p "build-fuzz/corpus/$f"
        build-fuzz/bin/$f -max_total_time="$fuzz_seconds" -print_final_stats=1 "build-fuzz/corpus/$f" 2>&1 | tail -n 12
      done ;;
    python)
      # torch and transformers from PyPI (CPU is enough: the tests build a tiny random-weight
      # Llama, nothing is downloaded from a model hub); the package builds with CMake.
      venv=build-python/venv
      [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
      echo "=== python: install (venv $venv)"
      "$venv/bin/pip" install -q --disable-pip-version-check "torch==2.15.0" "transformers==5.23.0" "pytest==9.2.0"
      "$venv/bin/pip" install -q --disable-pip-version-check ./python
      echo "=== python: test"
      "$venv/bin/pytest" -q python/tests ;;
    vllm|sglang)
      # The engine's pinned venv inside the checkout, made (or updated: pip skips what is
      # there) by its env script, which builds kvtier in build-$stage/{wheel_tag}.
      venv=$root/build-$stage/venv
      case "$stage" in
        vllm) tests=python/tests/test_vllm_connector.py ;;
        sglang) tests=python/tests/test_sglang_backend.py ;;
      esac
      echo "=== $stage: install (venv $venv)"
      bash "scripts/${stage}_env.sh" "$venv"
      echo "=== $stage: venv $(du -sh "$venv" | cut -f1)"
      echo "=== $stage: test"
      KVTIER_REQUIRE_ENGINE=$stage "$venv/bin/python" -m pytest -q -rs "$tests" ;;
    *) echo "unknown stage '$stage' (release, asan, tsan, fuzz, python, vllm, sglang)" >&2; exit 2 ;;
  esac
  echo "=== $stage: passed in $(( $(date +%s) - t0 ))s"
done
echo "=== all stages passed (${stages[*]}) in $(( $(date +%s) - start ))s"
