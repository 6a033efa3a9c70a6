#!/usr/bin/env bash
# Configures and builds chord (Release) into build/: the `chord` command and the
# three services land in build/bin/. Tests are configured but not built here
# (scripts/test.sh builds and runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --parallel "$(nproc)" --target chord chord-loader chord-worker chord-coordinator
