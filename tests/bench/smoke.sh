#!/usr/bin/env bash
# Smoke test of the benchmark (issue 6): builds chatd-bench, runs each of its modes for about a
# second with a few connections against a real chatd and the echo example, and fails unless every
# connection opened and chatd delivered every message without an error. Asserts no speed: CI
# machines are shared. Takes a few seconds once built.
#
# CHATD_BIN / ECHO_BIN point at prebuilt binaries; otherwise they are built (release).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

log() { printf 'bench-smoke: %s\n' "$*" >&2; }

if [ -z "${CHATD_BIN:-}" ] || [ -z "${ECHO_BIN:-}" ]; then
    cargo build --locked --release --bin chatd --example echo
fi
chatd=${CHATD_BIN:-$root/target/release/chatd}
echo_bin=${ECHO_BIN:-$root/target/release/examples/echo}
(cd bench && cargo build --locked --release --quiet)
bench="$root/bench/target/release/chatd-bench"
(cd bench && cargo test --locked --release --quiet 2>&1 | tail -n 2)

tmp=$(mktemp -d /tmp/chatd-bench-smoke.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on port $1"
    return 1
}

port=$(free_port)
cat >"$tmp/chatd.toml" <<TOML
listen = "127.0.0.1:$port"
log_level = "warn"
$( [ "$(id -u)" = 0 ] && echo 'user = "nobody"' )
[chat]
rate_per_second = 100000.0
rate_burst = 100000
[safety]
# The load comes from a few 127.0.0.x addresses.
max_connections_per_address = 0
address_search_burst = 0
TOML
"$chatd" --config "$tmp/chatd.toml" >"$tmp/chatd.log" 2>&1 &
pids+=($!)
chatd_pid=$!
wait_port "$port"

echo_port=$(free_port)
"$echo_bin" "127.0.0.1:$echo_port" >"$tmp/echo.log" 2>&1 &
pids+=($!)
wait_port "$echo_port"

# Waits until the previous phase's connections are gone from chatd (its /metrics says so), so
# that a new phase's searchers are never paired with a leaving client of the last one.
quiet() {
    python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/metrics"
deadline = time.monotonic() + 10
while True:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    line = next(l for l in text.splitlines() if l.startswith("chatd_websockets_open "))
    if line.split()[1] == "0":
        break
    if time.monotonic() > deadline:
        sys.exit(f"chatd still has open websockets after 10 s: {line}")
    time.sleep(0.05)
PY
}

run() {
    local what=$1
    shift
    quiet
    log "$what"
    "$bench" --quiet --check --threads 2 --warmup 0.2 --duration 1 --drain 3 \
        --connect-timeout 10 --json "$tmp/last.json" "$@"
}

run "chat, closed loop" --url "ws://127.0.0.1:$port/ws" --mode chat --conns 20 --window 4 \
    --server-pid "$chatd_pid"
run "chat, open loop" --url "ws://127.0.0.1:$port/ws" --mode chat --conns 20 --rate 500 \
    --server-pid "$chatd_pid"
run "chat, idle" --url "ws://127.0.0.1:$port/ws" --mode chat --conns 20 --idle
run "churn" --url "ws://127.0.0.1:$port/ws" --mode churn --conns 10 --sources 2
run "echo, closed loop" --url "ws://127.0.0.1:$echo_port/ws" --mode echo --conns 10 --window 2
# The JSON is there and says what the table said.
python3 - "$tmp/last.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["mode"] == "echo" and r["ready"] == 10 and r["messages"] > 0, r
assert r["drops"] == 0 and r["errors"] == 0, r
assert r["latency_us"]["p50"] > 0, r
PY
# chatd is still serving after all of it.
kill -0 "$chatd_pid"
log "ok"
