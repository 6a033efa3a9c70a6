#!/usr/bin/env bash
# A real multi-host run on one machine: network namespaces play the hosts
# (coordinator, loader, three workers, a client, an intruder), joined by veth
# pairs to a bridge in a namespace of its own. The real processes start from
# one cluster config, the client generates through gRPC, and the tokens must
# equal the in-process `chord generate`. Then the same with TLS, a bearer token
# and CURVE on every ZeroMQ link: the tokens must still match, a client without
# the token gets UNAUTHENTICATED, and a worker whose key is not in the
# allow-list is refused (and logged) while the others keep serving.
#
# Usage, from the repository root after a build into build/bin/:
#   bash tests/cluster/netns_test.sh
# Environment: CHORD_BIN_DIR (default build/bin), CHORD_MODEL (default the
# bundled model). Needs root and iproute2; exits 77 (skipped) without them.
# Namespaces and processes are removed on every exit, failed or not.
set -euo pipefail

BIN=$(realpath "${CHORD_BIN_DIR:-build/bin}")
MODEL=$(realpath "${CHORD_MODEL:-models/stories260K.gguf}")
PROMPT="Once upon a time"
MAX_TOKENS=40

skip() { echo "netns_test: SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "needs iproute2's ip"
command -v jq >/dev/null || skip "needs jq"
command -v openssl >/dev/null || skip "needs openssl"
for binary in chord chord-loader chord-coordinator chord-worker; do
  [ -x "$BIN/$binary" ] || { echo "netns_test: $BIN/$binary is missing: build first" >&2; exit 1; }
done

# Unique names, so that concurrent or leftover runs never collide.
TAG="cn$$"
SWITCH="$TAG-sw"
declare -A ADDRESS=([coord]=10.77.0.1 [loader]=10.77.0.2 [w0]=10.77.0.11 [w1]=10.77.0.12
                    [w2]=10.77.0.13 [intruder]=10.77.0.14 [client]=10.77.0.20)
HOSTS=(coord loader w0 w1 w2 intruder client)
WORK=$(mktemp -d /tmp/chord-netns.XXXXXX)
PIDS=()

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for host in "${HOSTS[@]}" sw; do
    local ns="$TAG-$host"
    if ip netns list | grep -w "$ns" >/dev/null; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    echo "netns_test: FAILED; the last lines of each process's log:" >&2
    for log in "$WORK"/*.log; do
      [ -f "$log" ] || continue
      echo "--- $(basename "$log")" >&2
      tail -n 15 "$log" >&2
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "netns_test: FAIL: $*" >&2; exit 1; }

# ---- the network: one bridge, one veth pair per host ----
ip netns add "$SWITCH" || skip "cannot create network namespaces here"
ip netns exec "$SWITCH" ip link add br0 type bridge
ip netns exec "$SWITCH" ip link set br0 up
for host in "${HOSTS[@]}"; do
  ns="$TAG-$host"
  ip netns add "$ns"
  ip link add eth0 netns "$ns" type veth peer name "p-$host" netns "$SWITCH"
  ip netns exec "$SWITCH" ip link set "p-$host" master br0
  ip netns exec "$SWITCH" ip link set "p-$host" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "${ADDRESS[$host]}/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
done
# With STP off (the default) bridge ports forward at once; wait_serving below
# polls across the bridge anyway.

# Runs `$@` in host $1's namespace in the background, its output in $WORK/<log>.log.
start() {
  local host=$1 log=$2
  shift 2
  ip netns exec "$TAG-$host" "$@" >"$WORK/$log.log" 2>&1 &
  PIDS+=($!)
}

stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# The cluster config every process reads; $1 adds the secure fields.
write_config() {
  local secure=$1 config="$WORK/cluster.yaml"
  {
    echo "coordinator:"
    echo "  host: ${ADDRESS[coord]}"
    echo "  grpc_port: 50051"
    echo "  control_port: 5555"
    echo "  min_workers: 3"
    echo "  kv_slots: 4"
    echo "  ctx_size: 256"
    if [ "$secure" = yes ]; then
      echo "  api_key_file: $WORK/token"
      echo "  tls_cert: $WORK/server.crt"
      echo "  tls_key: $WORK/server.key"
      echo "  curve_key: $WORK/keys/coordinator.key"
    fi
    echo "loader:"
    echo "  host: ${ADDRESS[loader]}"
    echo "  port: 5556"
    echo "  model: $MODEL"
    if [ "$secure" = yes ]; then echo "  curve_key: $WORK/keys/loader.key"; fi
    if [ "$secure" = yes ]; then
      echo "curve:"
      echo "  allow: $WORK/keys/allowed"
      echo "  coordinator_public_key: $WORK/keys/coordinator.pub"
      echo "  loader_public_key: $WORK/keys/loader.pub"
    fi
    echo "workers:"
    for w in w0 w1 w2; do
      echo "  - id: $w"
      echo "    host: ${ADDRESS[$w]}"
      echo "    data_port: 5600"
      echo "    threads: 1"
      if [ "$secure" = yes ]; then echo "    curve_key: $WORK/keys/$w.key"; fi
    done
  } >"$config"
}

start_cluster() {
  start loader loader "$BIN/chord-loader" --config "$WORK/cluster.yaml"
  start coord coordinator "$BIN/chord-coordinator" --config "$WORK/cluster.yaml"
  for w in w0 w1 w2; do
    start "$w" "$w" "$BIN/chord-worker" --config "$WORK/cluster.yaml" --id "$w"
  done
}

# `chord generate --server` from the client host; extra arguments pass through.
remote_generate() {
  ip netns exec "$TAG-client" "$BIN/chord" generate --server "${ADDRESS[coord]}:50051" --json \
    --prompt "$PROMPT" --max-tokens "$MAX_TOKENS" "$@"
}

# Polls until a generation succeeds (the plan is made and every stage loaded).
wait_serving() {
  local deadline=$((SECONDS + 90))
  until remote_generate "$@" >"$WORK/probe.json" 2>"$WORK/probe.err"; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$WORK/probe.err" >&2; fail "not serving after 90 s"; }
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a process exited early"; done
    sleep 0.5
  done
}

check_tokens() {
  local what=$1
  shift
  remote_generate "$@" >"$WORK/remote.json" 2>"$WORK/remote.err"
  local got
  got=$(jq -c .token_ids "$WORK/remote.json")
  [ "$got" = "$EXPECTED" ] || fail "$what: tokens $got differ from the in-process $EXPECTED"
  echo "netns_test: $what: $(jq '.token_ids | length' "$WORK/remote.json") tokens identical to the in-process run"
}

# ---- the reference: the same generation in this process ----
"$BIN/chord" generate --model "$MODEL" --json --prompt "$PROMPT" --max-tokens "$MAX_TOKENS" \
  >"$WORK/local.json" 2>"$WORK/local.log"
EXPECTED=$(jq -c .token_ids "$WORK/local.json")
[ "$(jq 'length' <<<"$EXPECTED")" -eq "$MAX_TOKENS" ] || fail "the reference run made no tokens"

# ---- 1: plaintext across the hosts ----
write_config no
start_cluster
wait_serving
check_tokens "plaintext, 3 worker hosts"
stop_all

# ---- 2: TLS, a bearer token and CURVE ----
mkdir -p "$WORK/keys/allowed"
for name in coordinator loader w0 w1 w2 intruder; do
  "$BIN/chord" keygen --out "$WORK/keys/$name" >/dev/null
done
for name in coordinator loader w0 w1 w2; do cp "$WORK/keys/$name.pub" "$WORK/keys/allowed/"; done
[ "$(stat -c %a "$WORK/keys/w0.key")" = 600 ] || fail "chord keygen's secret key is not mode 0600"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=${ADDRESS[coord]}" \
  -addext "subjectAltName=IP:${ADDRESS[coord]}" \
  -keyout "$WORK/server.key" -out "$WORK/server.crt" >/dev/null 2>&1
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$WORK/token"
TOKEN=$(cat "$WORK/token")
write_config yes
start_cluster
wait_serving --api-key "$TOKEN" --tls-ca "$WORK/server.crt"
check_tokens "TLS + token + CURVE" --api-key "$TOKEN" --tls-ca "$WORK/server.crt"
for log in loader coordinator w0 w1 w2; do
  grep -q "links CURVE" "$WORK/$log.log" || fail "$log does not report CURVE links"
done

# A client without the token.
if CHORD_API_KEY= remote_generate --tls-ca "$WORK/server.crt" >"$WORK/notoken.json" 2>"$WORK/notoken.err"; then
  fail "a client without the token was served"
fi
grep -q UNAUTHENTICATED "$WORK/notoken.err" || { cat "$WORK/notoken.err" >&2; fail "no UNAUTHENTICATED"; }
echo "netns_test: a client without the token gets UNAUTHENTICATED"

# A worker whose key is not in the allow-list.
INTRUDER_KEY=$(grep -v '^#' "$WORK/keys/intruder.pub" | head -n1)
start intruder intruder "$BIN/chord-worker" --config "$WORK/cluster.yaml" --id w9 \
  --curve-key "$WORK/keys/intruder.key" --data-bind "tcp://${ADDRESS[intruder]}:5600"
deadline=$((SECONDS + 20))
until grep -qF "refused CURVE peer $INTRUDER_KEY" "$WORK/coordinator.log"; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the coordinator did not log refusing the unknown key"
  sleep 0.2
done
# The refusal line quotes the intruder's Z85 key, whose characters may spell "w9" by chance.
if grep -vF "refused CURVE peer" "$WORK/coordinator.log" | grep -w "w9" >/dev/null; then
  fail "the unknown worker w9 was registered"
fi
echo "netns_test: a worker with an unknown key is refused and logged"
check_tokens "TLS + token + CURVE, after the refused worker" --api-key "$TOKEN" --tls-ca "$WORK/server.crt"
stop_all
echo "netns_test: PASS"
