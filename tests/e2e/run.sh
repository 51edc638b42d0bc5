#!/usr/bin/env bash
# End-to-end test of the page in a real headless Chromium.
#
# Installs what is missing (Debian's chromium, playwright-core from package-lock.json), builds
# chatd in release mode, runs it on a free 127.0.0.1 port with a temporary config, drives two
# browser pages against it, and writes a screenshot of each state to reports/screenshots/. For its
# last parts e2e.mjs restarts chatd with variants of that config beside it (proof of work on, then
# a ban list naming 127.0.0.1), and prints the median proof-of-work solve time it measured.
# Exits non-zero on any failure; nothing is skipped.
#
# CHATD_BIN=/path/to/chatd skips the build and tests that binary instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

log() { printf 'e2e: %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
[ -x /usr/bin/chromium ] || { log "no /usr/bin/chromium after install"; exit 1; }
command -v node >/dev/null || { log "node is required (apt-get install nodejs npm)"; exit 1; }

cd "$here"
want="$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')"
have="$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')"
if [ "$want" != "$have" ]; then
  log "npm ci (playwright-core $want)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# --- chatd -------------------------------------------------------------------------------------
if [ -z "${CHATD_BIN:-}" ]; then
  log "cargo build --release"
  (cd "$root" && cargo build --release --quiet)
  CHATD_BIN="$root/target/release/chatd"
fi
[ -x "$CHATD_BIN" ] || { log "$CHATD_BIN is not executable"; exit 1; }

tmp="$(mktemp -d)"
chmod 755 "$tmp" # readable by the account chatd drops to
pidfile="$tmp/chatd.pid"
cleanup() {
  if [ -s "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      sleep 0.5
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
max_chars=500
# chatd refuses to keep running as root: as root, let it drop to `nobody` after binding.
user_line=""
if [ "$(id -u)" -eq 0 ]; then user_line='user = "nobody"'; fi
cat >"$tmp/chatd.toml" <<EOF
listen = "127.0.0.1:$port"
log_level = "info"
$user_line

[chat]
max_message_chars = $max_chars

[safety]
# Every page comes from 127.0.0.1, and the test keeps more than the default 8 open at times.
max_connections_per_address = 0
EOF

log "chatd on 127.0.0.1:$port ($CHATD_BIN)"
CHATD_BIN="$CHATD_BIN" CHATD_CONFIG="$tmp/chatd.toml" CHATD_URL="http://127.0.0.1:$port/" \
  CHATD_PIDFILE="$pidfile" CHATD_MAX_CHARS="$max_chars" \
  node "$here/e2e.mjs"
