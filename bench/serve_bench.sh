#!/usr/bin/env bash
# Serving benchmark: makes a mid-size random Llama (so compute is not
# negligible), then runs serve_bench on it and on the bundled stories260K.
#   bench/serve_bench.sh BUILD_DIR [serve_bench flags...]
set -euo pipefail
build="${1:?usage: bench/serve_bench.sh BUILD_DIR [flags]}"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model="$work/bench-1024x6-q8_0.gguf"
"$build/bin/chord" mkmodel --out "$model" --type Q8_0 --seed 7 --name bench-1024x6 \
  --n-embd 1024 --n-layer 6 --n-head 16 --n-head-kv 4 --n-ff 2816 --n-vocab 8000 --n-ctx 2048 >/dev/null
echo "# serve_bench on $(nproc) cores, $(date -u +%Y-%m-%d), $(uname -m)"
"$build/bin/serve_bench" --bin-dir "$build/bin" --model "$model,$root/models/stories260K.gguf" "$@"
