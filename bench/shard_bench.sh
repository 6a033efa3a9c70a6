#!/usr/bin/env bash
# The shard-cache experiment (BENCHMARKS.md, "Shard cache"): makes the
# tinyllama-1.1b Q4_K_M model with `chord mkmodel`, runs bench/shard_bench over
# micro-batches and loader bandwidth limits, compares the loader transports, and
# times `chord serve` from start to the first token with a streaming budget.
#
#   bench/shard_bench.sh BIN_DIR OUT_DIR [THREADS]
set -euo pipefail
bin=${1:?BIN_DIR (holding chord, chord-loader, chord-coordinator, chord-worker, shard_bench)}
out=${2:?OUT_DIR}
threads=${3:-2}
mkdir -p "$out"
model="$out/tinyllama-1.1b-q4_k_m.gguf"
[ -f "$model" ] || "$bin/chord" mkmodel --preset tinyllama-1.1b --type Q4_K_M --out "$model" >/dev/null 2>&1

# Regimes: transfer slower than, about equal to, and faster than compute.
"$bin/shard_bench" --bin-dir "$bin" --model "$model" --threads "$threads" --transport shm \
  --batches 1,4,8,16,32 --bandwidths 0,2500M,1200M,250M --steps 5 | tee "$out/shard_matrix.md"
# Transports, unlimited: bytes over tcp loopback, over a Unix socket, or read from the file.
for transport in tcp ipc; do
  "$bin/shard_bench" --bin-dir "$bin" --model "$model" --threads "$threads" --transport "$transport" \
    --batches 1,8 --bandwidths 0 --steps 3 | tee "$out/shard_$transport.md"
done

# chord serve: start to first token, resident and streaming (a quarter of the model).
budget=$(( $(stat -c %s "$model") / 4 ))
for args in "" "--worker-budget $budget"; do
  port=$(( 20000 + RANDOM % 20000 ))
  start=$(date +%s.%N)
  "$bin/chord" serve --model "$model" --workers 1 --threads "$threads" --port "$port" --quiet $args &
  serve=$!
  until "$bin/chord" generate --server "127.0.0.1:$port" --prompt "Once upon a time" --max-tokens 1 \
      --temperature 0 >/dev/null 2>&1; do
    sleep 0.2
  done
  end=$(date +%s.%N)
  echo "chord serve ${args:-(resident)}: first token $(awk "BEGIN{printf \"%.2f\", $end - $start}") s after start" \
    | tee -a "$out/serve_ttft.txt"
  kill -TERM "$serve"; wait "$serve" || true
done
