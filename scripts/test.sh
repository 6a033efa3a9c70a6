#!/usr/bin/env bash
# Builds chord with AddressSanitizer and UndefinedBehaviorSanitizer into
# build-test/ and runs the test suite (labels: cpu; cuda tests skip without a GPU).
# Extra arguments go to ctest, e.g. `scripts/test.sh -R Reference`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHORD_SANITIZE=ON >/dev/null
cmake --build build-test --parallel "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-test --output-on-failure --parallel "$(nproc)" --timeout 900 "$@"
