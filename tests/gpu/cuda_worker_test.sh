#!/usr/bin/env bash
# Workers on the GPU, end to end: a loader, a coordinator and chord-worker
# processes with `--backend cuda` (all-GPU, then one CPU and one CUDA worker;
# on a machine with two or more GPUs also one worker per GPU, whose stages
# pass activations over NCCL, alone and beside CPU and same-GPU stages) serve
# the bundled model on loopback; greedy tokens through the gRPC API must
# equal the in-process CPU `chord generate` (F32 model and F32 KV cache: the
# two backends' logits agree far within the greedy margins of these prompts).
# Setups with a GPU memory budget stream layers to the GPU each step: from
# pinned host memory holding them all, or from a shard cache smaller than them.
#   tests/gpu/cuda_worker_test.sh BIN_DIR MODEL
# Exit 77 (skipped) without an NVIDIA GPU or without a CUDA build.
set -euo pipefail
BIN=${1:?usage: cuda_worker_test.sh BIN_DIR MODEL}
MODEL=${2:?usage: cuda_worker_test.sh BIN_DIR MODEL}
# (grep reads all of its input here: with pipefail, a grep -q that stops at
# the first match may leave the producer killed by SIGPIPE, failing the test.)
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep GPU >/dev/null; then
  echo "SKIP: no NVIDIA GPU"; exit 77
fi
if ! ldd "$BIN/chord-worker" | grep libcublas >/dev/null; then
  echo "SKIP: chord-worker was built without CUDA"; exit 77
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cluster BACKEND[:DEVICE][/GPU_BUDGET[/MEMORY_BUDGET]]... : one worker per argument.
start_cluster() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  rm -f "$WORK"/w*.log  # the checks below read this setup's logs only
  LOADER=$(free_port); CONTROL=$(free_port); GRPC=$(free_port)
  "$BIN/chord-loader" --model "$MODEL" --bind "tcp://127.0.0.1:$LOADER" --metrics-port -1 \
    >"$WORK/loader.log" 2>&1 & PIDS+=($!)
  "$BIN/chord-coordinator" --loader "tcp://127.0.0.1:$LOADER" --grpc-port "$GRPC" \
    --control-bind "tcp://127.0.0.1:$CONTROL" --min-workers $# --kv-type f32 --ctx-size 128 \
    >"$WORK/coordinator.log" 2>&1 & PIDS+=($!)
  local i=0
  for spec in "$@"; do
    local where=${spec%%/*} budgets=() device=0
    local backend=${where%%:*}
    [ "$where" != "$backend" ] && device=${where#*:}
    if [ "$spec" != "$where" ]; then
      local sizes=${spec#*/}
      budgets+=(--gpu-memory-budget "${sizes%%/*}")
      [ "$sizes" != "${sizes%%/*}" ] && budgets+=(--memory-budget "${sizes#*/}")
    fi
    "$BIN/chord-worker" --id "w$i" --coordinator "tcp://127.0.0.1:$CONTROL" --backend "$backend" \
      --device "$device" --threads 2 --metrics-port -1 --nccl-min-rows 1 "${budgets[@]}" \
      >"$WORK/w$i.log" 2>&1 & PIDS+=($!)
    i=$((i + 1))
  done
  for _ in $(seq 1 300); do
    if grep -q "health: SERVING" "$WORK/coordinator.log"; then return 0; fi
    sleep 0.1
  done
  echo "FAIL: the cluster ($*) did not become SERVING"; tail -n 20 "$WORK"/*.log; exit 1
}

tokens() { grep -o '"token_ids":\[[0-9,]*\]' | head -1; }

# stories260K: 262,400 bytes of embedding and output tensors, layers of
# 181,760. A GPU budget of 1,000,000 keeps layers 0-1 and streams 2-4 from
# pinned memory holding them; 700,000 streams all five, here through a
# 400,000-byte shard cache (two layers) that fetches the others from the
# loader as they come.
SETUPS=("cuda" "cuda cuda" "cpu cuda" "cuda/1000000" "cuda/700000/400000")
GPUS=$(nvidia-smi -L | grep -c GPU)
if [ "$GPUS" -ge 2 ]; then
  SETUPS+=("cuda:0 cuda:1" "cpu cuda:0 cuda:1" "cuda:0 cuda:1 cuda:0")
else
  echo "note: one GPU: the NCCL setups (one worker per GPU) are not run"
fi

status=0
for prompt in "Once upon a time" "Lily and Ben went to the park"; do
  expected=$("$BIN/chord" generate --model "$MODEL" --prompt "$prompt" --temperature 0 --max-tokens 40 \
    --kv-type f32 --ctx-size 128 --json 2>/dev/null | tokens)
  for setup in "${SETUPS[@]}"; do
    # shellcheck disable=SC2086
    start_cluster $setup
    got=$("$BIN/chord" generate --server "127.0.0.1:$GRPC" --prompt "$prompt" --temperature 0 \
      --max-tokens 40 --json 2>/dev/null | tokens)
    links=$(cat "$WORK"/w*.log | grep -c "NCCL link up" || true)
    streaming=$(cat "$WORK"/w*.log | grep -c "stream to it through" || true)
    if [[ "$setup" == *"/"* ]] && [ "$streaming" -lt 1 ]; then
      echo "FAIL: [$setup] '$prompt': no worker streams layers to its GPU"
      grep -h "layers" "$WORK"/w*.log | tail -n 10
      status=1
    elif [[ "$setup" == *"cuda:0 cuda:1"* ]] && [ "$links" -lt 2 ]; then
      echo "FAIL: [$setup] '$prompt': $links worker(s) brought an NCCL link up, expected 2"
      grep -h "NCCL" "$WORK"/*.log | tail -n 10
      status=1
    elif [ -n "$got" ] && [ "$got" = "$expected" ]; then
      echo "ok: [$setup] '$prompt' ($links NCCL link(s))"
    else
      echo "FAIL: [$setup] '$prompt': expected $expected, got ${got:-nothing}"
      tail -n 5 "$WORK"/*.log
      status=1
    fi
  done
done
exit $status
