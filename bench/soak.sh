#!/usr/bin/env bash
# Soak benchmark: starts `chord serve` with 3 workers on a model (the bundled
# stories260K by default), runs bench/soak (64 concurrent streaming clients by
# default) for DURATION seconds, prints its tables, then stops the server.
#   bench/soak.sh BIN_DIR DURATION_S [MODEL] [soak flags...]
# BIN_DIR holds chord, chord-loader, chord-coordinator, chord-worker and soak
# (build/bin after `ninja soak chord chord-loader chord-coordinator chord-worker`).
# Exits with soak's status (1 when a check failed).
set -euo pipefail
bin="${1:?usage: bench/soak.sh BIN_DIR DURATION_S [MODEL] [soak flags...]}"
duration="${2:?usage: bench/soak.sh BIN_DIR DURATION_S [MODEL] [soak flags...]}"
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${3:-$root/models/stories260K.gguf}"
shift $(( $# >= 3 ? 3 : $# ))
soak="$bin/soak"
[[ -x "$soak" ]] || { echo "no soak binary in $bin (ninja soak puts it in build/bin)" >&2; exit 2; }

# A free loopback port, asked of the kernel.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
"$bin/chord" serve --model "$model" --workers 3 --port "$port" --quiet >"$log" 2>&1 &
serve=$!
stop() {
  kill -TERM "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
  rm -f "$log"
}
trap stop EXIT
echo "# chord serve (pid $serve) on 127.0.0.1:$port, model $(basename "$model"), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
status=0
"$soak" --server "127.0.0.1:$port" --serve-pid "$serve" --clients 64 --duration "$duration" "$@" || status=$?
if ! kill -0 "$serve" 2>/dev/null; then
  echo "chord serve exited during the soak; its output:" >&2
  tail -50 "$log" >&2
  status=1
fi
exit "$status"
