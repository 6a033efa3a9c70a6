#!/bin/bash
# Runs openai_client_test.mjs against a fresh `chord serve` on loopback.
# Installs the `openai` npm package (4.x) into NODE_DIR on first use.
# Exit 77 (skipped) when node/npm or the package cannot be had.
# Usage: run_openai_client_test.sh BIN_DIR NODE_DIR
set -u
bin_dir=$1
node_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null && command -v npm >/dev/null || { echo "SKIP: node/npm not installed"; exit 77; }
if [ ! -d "$node_dir/node_modules/openai" ]; then
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund openai@4.95.0) ||
    { echo "SKIP: cannot install the openai npm package"; exit 77; }
fi
cp "$here/openai_client_test.mjs" "$node_dir/"
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$bin_dir/chord" serve --workers 2 --port 0 --http-port "$http_port" --chat-template chatml >"$log" 2>&1 &
serve_pid=$!
cleanup() { kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid"; rm -f "$log"; }
trap cleanup EXIT
grpc=""
for _ in $(seq 1 600); do
  grpc=$(sed -n 's/^chord serve: serving .* on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$log")
  [ -n "$grpc" ] && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "chord serve exited:"; cat "$log"; exit 1; }
  sleep 0.2
done
[ -n "$grpc" ] || { echo "chord serve did not come up:"; cat "$log"; exit 1; }
node "$node_dir/openai_client_test.mjs" "http://127.0.0.1:$http_port" "$grpc" "$bin_dir/chord"
status=$?
[ $status -eq 0 ] || tail -n 40 "$log"
exit $status
