#!/usr/bin/env bash
# Builds chord's libFuzzer targets (fuzz/, clang with AddressSanitizer and
# UndefinedBehaviorSanitizer) into build-fuzz/ and runs each one for
# SECONDS_PER_TARGET seconds (default 60), starting from a copy of its
# committed corpus (fuzz/corpus/<target>/, left untouched). Exits non-zero if
# a target crashes, leaks, times out or runs out of memory, and prints the path
# of the input that did it: copy that file into fuzz/corpus/<target>/ under a
# name saying what it was, and fix the bug.
#
# Extra arguments restrict the run to the named targets: scripts/fuzz.sh 30 gguf message
# Targets run side by side, one per core (FUZZ_JOBS overrides the count).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(gguf tokenizer message config); fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
start=$(date +%s)
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCHORD_FUZZ=ON "${launcher[@]}" >/dev/null
cmake --build build-fuzz --parallel "$(nproc)" --target chord_fuzz_targets
echo "fuzz.sh: build took $(($(date +%s) - start)) s"

work="build-fuzz/runs"
rm -rf "$work"
mkdir -p "$work"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# Runs one target; its exit status goes to $work/<target>/rc.
run_target() {
  local target="$1"
  local corpus="$work/$target/corpus"
  local artifacts="$work/$target/artifacts/"
  mkdir -p "$corpus" "$artifacts"
  cp fuzz/corpus/"$target"/* "$corpus"/
  # -max_len: the largest seed is a 32 KB model file; -timeout: one input may
  # take at most 10 s (a hang is a bug); -rss_limit_mb: a 2 GB allocation
  # from a few KB of input is a bug too.
  local rc=0
  "build-fuzz/bin/${target}_fuzz" "$corpus" -max_total_time="$seconds" -max_len=65536 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts" \
    >"$work/$target/log" 2>&1 || rc=$?
  echo "$rc" >"$work/$target/rc"
}

# Each fuzzer uses one core: run as many at once as there are cores.
jobs="${FUZZ_JOBS:-$(nproc)}"
running=0
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for $seconds s"
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
for target in "${targets[@]}"; do
  if [ "$(cat "$work/$target/rc")" != 0 ]; then
    tail -n 60 "$work/$target/log"
    echo "fuzz.sh: $target failed; the input:" "$work/$target/artifacts/"*
    failed=1
  else
    echo "fuzz.sh: $target:" $(grep -E "^#[0-9]+[[:space:]]+DONE" "$work/$target/log" | tail -n 1)
  fi
done
if [ "$failed" -ne 0 ]; then exit 1; fi
echo "fuzz.sh: every target ran $seconds s without a failure"
