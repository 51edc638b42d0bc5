#!/usr/bin/env bash
# Checks the files in deploy/ without installing or applying anything on this host:
#
#   1. deploy/chatd.service  - the lines the contract needs (Type=notify, ExecStartPre/ExecReload
#                              run `chatd -t`, User=chatd + CAP_NET_BIND_SERVICE, LimitNOFILE, MemoryMax, ...);
#                              `systemd-analyze verify` prints nothing; `systemd-analyze security
#                              --offline=true` scores it 2.5 or lower; and the unit's own
#                              ExecStartPre/ExecStart/ExecReload/stop lines, run as an unprivileged
#                              user against the given binary, behave as systemd expects (READY=1,
#                              reload, STOPPING=1, exit 0 before TimeoutStopSec).
#   2. deploy/logrotate      - `logrotate -d` parses it; a real forced rotation in a temporary
#                              directory creates, compresses (delayed) and runs postrotate.
#   3. deploy/sysctl.d/*.conf - every key exists under /proc/sys and its value has the same shape
#                              as the current one.
#
# Usage: tests/deploy/check.sh [PATH-TO-CHATD]   (default target/release/chatd; builds nothing)
# Installs systemd (systemd-analyze), logrotate and procps (/bin/kill) with apt-get if missing.
# Everything it writes goes to a temporary directory that is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
UNIT=$ROOT/deploy/chatd.service
LOGROTATE_CONF=$ROOT/deploy/logrotate
SYSCTL_DIR=$ROOT/deploy/sysctl.d
BIN_ARG=${1:-target/release/chatd}

failures=0
section() { printf '\n--- %s\n' "$*"; }
ok() { printf '  ok    %s\n' "$*"; }
bad() {
    printf '  FAIL  %s\n' "$*"
    failures=$((failures + 1))
}
say() { printf '  %s\n' "$*"; }
indent() { sed 's/^/        /'; }
die() {
    printf 'deploy check: %s\n' "$*" >&2
    exit 1
}

# ---- tools -------------------------------------------------------------------------------------
section "tools"
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -x /usr/sbin/logrotate ] || command -v logrotate >/dev/null || missing+=(logrotate)
[ -x /bin/kill ] || missing+=(procps) # the unit's ExecReload=/bin/kill must exist for verify; pgrep
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root to install them"
    say "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
LOGROTATE=$(command -v logrotate || echo /usr/sbin/logrotate)
say "$(systemd-analyze --version | head -n 1); $("$LOGROTATE" --version 2>&1 | head -n 1)"

[ -x "$BIN_ARG" ] || die "no executable chatd at $BIN_ARG (run: cargo build --release)"
TMP=$(mktemp -d)
NOTIFY_PID='' CHATD_PID='' TRACER_PID='' USR1_PID=''
cleanup() {
    for p in $CHATD_PID $TRACER_PID $NOTIFY_PID $USR1_PID; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
# A copy of the binary and the config in world-readable places, so that the unprivileged user the
# lifecycle check runs as can reach them wherever the checkout lives.
chmod 0755 "$TMP"
mkdir -p "$TMP/bin" "$TMP/etc" "$TMP/unit" "$TMP/run"
install -m 0755 "$BIN_ARG" "$TMP/bin/chatd"
BIN=$TMP/bin/chatd
say "binary: $BIN_ARG (copied to $BIN)"

# ---- 1. the unit: contract lines -----------------------------------------------------------------
section "chatd.service: required lines ($UNIT)"
# All values of KEY in the unit, one per line, in order (comments skipped).
unit_values() {
    awk -v key="$1" '/^[[:space:]]*[#;]/ { next }
        index($0, key "=") == 1 { v = substr($0, length(key) + 2); sub(/[[:space:]]+$/, "", v); print v }' "$UNIT"
}
expect_line() { # KEY VALUE: exactly one KEY= line, with this value
    local got
    got=$(unit_values "$1")
    if [ "$got" = "$2" ]; then ok "$1=${2//$'\n'/ ; $1=}"; else bad "$1: want '$2', found '${got//$'\n'/ | }'"; fi
}
expect_line Type notify
expect_line ExecStartPre "/usr/local/bin/chatd -t --config /etc/chatd/chatd.toml"
expect_line ExecStart "/usr/local/bin/chatd --foreground --config /etc/chatd/chatd.toml"
# shellcheck disable=SC2016 # $MAINPID is literal: systemd expands it
expect_line ExecReload "/usr/local/bin/chatd -t --config /etc/chatd/chatd.toml"$'\n''/bin/kill -HUP $MAINPID'
expect_line Restart on-failure
expect_line User chatd
expect_line Group chatd
expect_line AmbientCapabilities CAP_NET_BIND_SERVICE
expect_line CapabilityBoundingSet CAP_NET_BIND_SERVICE
expect_line NoNewPrivileges yes
expect_line RuntimeDirectory chatd
expect_line LogsDirectory chatd
expect_line ConfigurationDirectory chatd
nofile=$(unit_values LimitNOFILE)
if [[ $nofile =~ ^[0-9]+$ ]] && [ "$nofile" -ge 110000 ]; then
    ok "LimitNOFILE=$nofile (>= 100,000 connections + headroom)"
else
    bad "LimitNOFILE='$nofile': want a number >= 110000 for 100,000 connections"
fi
memmax=$(unit_values MemoryMax)
if [[ $memmax =~ ^([1-9][0-9]?)%$ ]]; then
    ok "MemoryMax=$memmax (a share of the host's memory bounds the queued output)"
else
    bad "MemoryMax='$memmax': want a percentage of the host's memory, e.g. 75%"
fi
stop=$(unit_values TimeoutStopSec)
case $stop in
*min) stop_s=$((${stop%min} * 60)) ;;
*s) stop_s=${stop%s} ;;
*) stop_s=$stop ;;
esac
if [[ $stop_s =~ ^[0-9]+$ ]] && [ "$stop_s" -gt 10 ]; then
    ok "TimeoutStopSec=$stop (above chatd's default shutdown_timeout of 10 s)"
else
    bad "TimeoutStopSec='$stop': want more than shutdown_timeout (10 s)"
    stop_s=20
fi

# ---- 1. the unit: systemd-analyze ------------------------------------------------------------------
section "chatd.service: systemd-analyze"
# verify fails when an Exec binary does not exist, so check a copy that points at the binary under
# test. The copy must keep the name chatd.service (verify wants a unit name).
sed "s#/usr/local/bin/chatd#$BIN#g" "$UNIT" >"$TMP/unit/chatd.service"
if grep -q /usr/local/bin/chatd "$TMP/unit/chatd.service"; then bad "path substitution failed"; fi
say "\$ systemd-analyze verify $TMP/unit/chatd.service   (the unit with /usr/local/bin/chatd -> $BIN)"
if systemd-analyze verify "$TMP/unit/chatd.service" >"$TMP/verify.out" 2>&1 && [ ! -s "$TMP/verify.out" ]; then
    ok "verify: exit 0, no output"
else
    bad "verify printed something or failed:"
    indent <"$TMP/verify.out"
fi
# Control: the same check must notice a bad line (verify exits 0 on unknown keys, printing a warning).
mkdir -p "$TMP/control"
sed 's/^Type=notify$/Type=notify\nNoSuchKey=1/' "$TMP/unit/chatd.service" >"$TMP/control/chatd.service"
if systemd-analyze verify "$TMP/control/chatd.service" >"$TMP/control.out" 2>&1 && [ ! -s "$TMP/control.out" ]; then
    bad "control: verify said nothing about an unknown key, so the check above proves nothing"
else
    ok "control: an unknown key is reported ($(head -n 1 "$TMP/control.out"))"
fi

say "\$ systemd-analyze security --offline=true --threshold=25 --no-pager $TMP/unit/chatd.service"
rc=0
SYSTEMD_COLORS=0 systemd-analyze security --offline=true --threshold=25 --no-pager \
    "$TMP/unit/chatd.service" >"$TMP/security.out" 2>&1 || rc=$?
exposure=$(sed -n 's/.*Overall exposure level for chatd\.service: \([0-9][0-9.]*\).*/\1/p' "$TMP/security.out")
if [ -z "$exposure" ]; then
    bad "security: no 'Overall exposure level' line (exit $rc):"
    indent <"$TMP/security.out"
elif [ "$rc" = 0 ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.5) }'; then
    ok "security: overall exposure $exposure (<= 2.5; --threshold=25 passed)"
    say "remaining exposure:"
    grep '✗' "$TMP/security.out" | sed 's/  \+/  /g' | indent
else
    bad "security: overall exposure $exposure, exit $rc (want <= 2.5 and exit 0)"
    grep '✗' "$TMP/security.out" | indent
fi

# ---- 1. the unit against the binary: what systemd would run, in order -------------------------------
section "chatd.service: its Exec lines against $BIN_ARG"
# Runs the unit's Exec lines with the binary and config paths pointed at the test copies, as
# systemd would: as an unprivileged user (systemd uses User=chatd; chatd also refuses to run as
# root without a `user` to drop to), ExecStart with a notify socket. Every command runs under
# strace, so that the system calls and socket families chatd uses can be checked against the
# unit's SystemCallFilter= and RestrictAddressFamilies= afterwards (a call outside the filter
# would kill chatd with SIGSYS under systemd). The lines have no quoting: word splitting is enough.
if [ "$(id -u)" = 0 ]; then
    AS_USER=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups)
else
    AS_USER=()
fi
mkdir -p "$TMP/trace"
strace -f -qq -o /dev/null true || die "strace cannot trace here (ptrace blocked?); the syscall filter check needs it"
TRACE_N=0
traced() { # COMMAND...: run as the service user, under strace
    TRACE_N=$((TRACE_N + 1))
    strace -f -qq -o "$TMP/trace/$TRACE_N" "${AS_USER[@]}" "$@"
}
exec_line() { # LINE [MAINPID] -> the argv, one word per array element, in CMD
    local line=${1//\/usr\/local\/bin\/chatd/$BIN}
    line=${line//\/etc\/chatd\/chatd.toml/$CONFIG}
    line=${line//\$MAINPID/${2:-}}
    read -ra CMD <<<"$line"
}
mapfile -t reload_lines < <(unit_values ExecReload)
start_pre=$(unit_values ExecStartPre)
start=$(unit_values ExecStart)

# ExecStartPre (and the first ExecReload) on a valid and on an invalid file.
CONFIG=$TMP/etc/bad.toml
printf 'listen = "127.0.0.1:0"\nno_such_key = 1\n' >"$CONFIG"
chmod 0644 "$CONFIG"
exec_line "$start_pre"
rc=0
traced "${CMD[@]}" >"$TMP/run/bad.out" 2>&1 || rc=$?
if [ "$rc" != 0 ] && [ -s "$TMP/run/bad.out" ]; then
    ok "ExecStartPre on a bad file: exit $rc, says: $(head -n 1 "$TMP/run/bad.out")"
else
    bad "ExecStartPre on a bad file: exit $rc (want non-zero with a message) - start and reload would not stop it"
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CONFIG=$TMP/etc/chatd.toml
printf 'listen = "127.0.0.1:%s"\n' "$PORT" >"$CONFIG"
chmod 0644 "$CONFIG"
exec_line "$start_pre"
if traced "${CMD[@]}" >"$TMP/run/pre.out" 2>&1; then
    ok "ExecStartPre on a good file: exit 0"
else
    bad "ExecStartPre on a good file failed: $(cat "$TMP/run/pre.out")"
fi

# ExecStart with a notify socket, as systemd runs a Type=notify service.
NOTIFY_SOCKET_PATH=$TMP/run/notify.sock
NOTIFY_LOG=$TMP/run/notify.log
: >"$NOTIFY_LOG"
python3 - "$NOTIFY_SOCKET_PATH" "$NOTIFY_LOG" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        log.write(s.recv(4096).decode(errors="replace").strip().replace("\n", " ") + "\n")
PY
NOTIFY_PID=$!
wait_for() { # SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}
notified() { [ "$(grep -c -- "$1" "$NOTIFY_LOG")" -ge "${2:-1}" ]; }
# A process that exited but is not yet reaped is a zombie, which kill -0 still finds.
gone() { [ ! -e "/proc/$1" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]; }
exited() { gone "$TRACER_PID"; }
alive() { ! exited; }
ready_or_exited() { notified READY=1 || exited; }
http_get() { # PATH -> the status line's code
    local code
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&3
    read -r _ code _ <&3 || true
    exec 3<&-
    echo "$code"
}
wait_for 10 test -S "$NOTIFY_SOCKET_PATH" || die "notify listener did not start"

exec_line "$start"
say "\$ NOTIFY_SOCKET=$NOTIFY_SOCKET_PATH ${AS_USER[*]} ${CMD[*]}   (under strace)"
TRACE_N=$((TRACE_N + 1))
NOTIFY_SOCKET=$NOTIFY_SOCKET_PATH strace -f -qq -o "$TMP/trace/$TRACE_N" "${AS_USER[@]}" "${CMD[@]}" \
    >"$TMP/run/chatd.log" 2>&1 &
TRACER_PID=$!
if wait_for 20 ready_or_exited && notified READY=1 && alive; then
    CHATD_PID=$(pgrep -P "$TRACER_PID")
    ok "ExecStart: READY=1 received, chatd running as pid $CHATD_PID"
    page=$(http_get /) health=$(http_get /healthz)
    if [ "$page" = 200 ] && [ "$health" = 200 ]; then
        ok "serving: GET / $page, GET /healthz $health"
    else
        bad "serving: GET / '$page', GET /healthz '$health' (want 200)"
    fi

    # ExecReload, in order, as systemctl reload would (any failing line fails the reload).
    reload_ok=1
    for line in "${reload_lines[@]}"; do
        exec_line "$line" "$CHATD_PID"
        if traced "${CMD[@]}" >"$TMP/run/reload.out" 2>&1; then
            ok "ExecReload=$line: exit 0"
        else
            bad "ExecReload=$line failed: $(cat "$TMP/run/reload.out")"
            reload_ok=0
        fi
    done
    if [ $reload_ok = 1 ]; then
        if wait_for 10 notified READY=1 2 && notified RELOADING=1 && alive; then
            ok "reload: RELOADING=1 then READY=1 again, still running"
        else
            bad "reload: no RELOADING=1 + second READY=1 (or chatd died); notifications: $(tr '\n' ';' <"$NOTIFY_LOG")"
        fi
    fi
    # What the logrotate postrotate sends (a no-op without log_file, but it must not hurt).
    kill -USR1 "$CHATD_PID"
    sleep 0.3
    if alive && [ "$(http_get /healthz)" = 200 ]; then ok "SIGUSR1: still serving"; else bad "SIGUSR1: chatd died or stopped serving"; fi

    # systemctl stop: KillSignal=SIGTERM, then SIGKILL after TimeoutStopSec.
    kill -TERM "$CHATD_PID"
    if wait_for "$stop_s" exited; then
        rc=0
        wait "$TRACER_PID" || rc=$?
        TRACER_PID='' CHATD_PID=''
        if [ "$rc" = 0 ] && notified STOPPING=1; then
            ok "stop: STOPPING=1, exit 0 within TimeoutStopSec=${stop_s}s"
        else
            bad "stop: exit $rc, notifications: $(tr '\n' ';' <"$NOTIFY_LOG")"
        fi
    else
        bad "stop: still running after TimeoutStopSec=${stop_s}s (systemd would SIGKILL it)"
    fi
else
    bad "ExecStart: no READY=1 (chatd exited, or nothing within 20 s: systemd would time the start out); chatd said:"
    tail -n 20 "$TMP/run/chatd.log" | indent
fi
for p in $CHATD_PID $TRACER_PID; do kill -KILL "$p" 2>/dev/null || true; done
[ -z "$TRACER_PID" ] || wait "$TRACER_PID" 2>/dev/null || true
TRACER_PID='' CHATD_PID=''
kill "$NOTIFY_PID" 2>/dev/null || true
wait "$NOTIFY_PID" 2>/dev/null || true
NOTIFY_PID=''

# The system calls and socket families seen above, against the unit's filters. Only what runs
# after the exec of the unit's own binaries counts (setpriv's calls are done by systemd).
say "checking $TRACE_N traces against SystemCallFilter= and RestrictAddressFamilies="
unit_values SystemCallFilter >"$TMP/filter"
unit_values RestrictAddressFamilies >"$TMP/families"
if python3 - "$TMP/filter" "$TMP/families" "$TMP"/trace/* >"$TMP/syscalls.out" 2>&1 <<'PY'; then
import re, subprocess, sys

# The groups as this systemd defines them: "@name" lines, then members (names or @groups).
groups, cur = {}, None
for line in subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                           capture_output=True, text=True, check=True).stdout.splitlines():
    if line.startswith("@"):  # a group's name, unindented; its members are indented
        cur = groups.setdefault(line.split()[0], set())
        continue
    line = line.strip()
    if cur is not None and line and not line.startswith("#"):
        cur.add(line.split()[0])

def expand(name, seen=()):
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(m, seen + (name,)) for m in groups[name] if m not in seen))

# SystemCallFilter= semantics: the first line decides allow-list (no ~) or deny-list (~);
# later allow lines add to an allow-list, later ~ lines remove from it (and vice versa).
allowed, denied = None, set()
for line in open(sys.argv[1]).read().split("\n"):
    if not line:
        continue
    deny = line.startswith("~")
    names = set().union(*(expand(n) for n in line.lstrip("~").split()))
    if allowed is None and not deny:
        allowed = names
    elif deny:
        if allowed is None:
            denied |= names
        else:
            allowed -= names
    else:
        if allowed is None:
            denied -= names
        else:
            allowed |= names
families = set(open(sys.argv[2]).read().split())

used, fams, bad = {}, set(), []
call = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")
for path in sys.argv[3:]:
    on = False
    for line in open(path, errors="replace"):
        m = re.search(r'execve\("([^"]+)"', line)
        if m and not m.group(1).endswith("/setpriv") and "= 0" in line:
            on = True
        if not on:
            continue
        m = call.match(line)
        if m:
            used.setdefault(m.group(1), path.rsplit("/", 1)[1])
        m = re.search(r"socket(?:pair)?\((AF_[A-Z0-9]+)", line)
        if m:
            fams.add(m.group(1))
for name in sorted(used):
    if (allowed is not None and name not in allowed) or name in denied:
        bad.append(f"system call {name} (trace {used[name]}) is outside SystemCallFilter=")
for fam in sorted(fams):
    if families and fam not in families:
        bad.append(f"socket family {fam} is outside RestrictAddressFamilies=")
print(f"{len(used)} distinct system calls, socket families {' '.join(sorted(fams)) or 'none'}")
print(" ".join(sorted(used)))
for b in bad:
    print(b)
sys.exit(1 if bad or not used else 0)
PY
    ok "sandbox: $(head -n 1 "$TMP/syscalls.out"), all allowed by the unit"
    sed -n 2p "$TMP/syscalls.out" | fold -s -w 92 | indent
else
    bad "sandbox: chatd would be killed (SIGSYS) or refused by the unit's filters:"
    indent <"$TMP/syscalls.out"
fi

# ---- 2. logrotate -----------------------------------------------------------------------------------
section "logrotate ($LOGROTATE_CONF)"
LR=$TMP/logrotate
mkdir -p "$LR/log"
chmod 0750 "$LR/log"
# `create 0640 chatd adm` needs the user and group to exist; on a host without them (CI), check a
# copy that names root instead, and say so.
owner=chatd group=adm
getent passwd chatd >/dev/null || owner=$(id -un)
getent group adm >/dev/null || group=$(id -gn)
[ "$owner $group" = "chatd adm" ] || say "no user chatd (or group adm) on this host: checking a copy with 'create 0640 $owner $group'"
grep -q '^[[:space:]]*create 0640 chatd adm$' "$LOGROTATE_CONF" || bad "no 'create 0640 chatd adm' line"
sed "s/create 0640 chatd adm$/create 0640 $owner $group/" "$LOGROTATE_CONF" >"$LR/chatd"
chmod 0644 "$LR/chatd" # logrotate ignores config files writable by group or others

say "\$ logrotate -d -s $LR/state $LR/chatd"
if "$LOGROTATE" -d -s "$LR/state" "$LR/chatd" >"$LR/debug.out" 2>&1 && ! grep -qi '^error' "$LR/debug.out"; then
    ok "logrotate -d: parses, no errors ($(grep -m1 'rotating pattern' "$LR/debug.out"))"
else
    bad "logrotate -d:"
    indent <"$LR/debug.out"
fi

# The postrotate script, as /bin/sh will run it: syntax only (running it would signal a real chatd).
awk '/^[[:space:]]*endscript/ { s = 0 } s { print } /^[[:space:]]*postrotate/ { s = 1 }' "$LOGROTATE_CONF" >"$LR/postrotate.sh"
if [ -s "$LR/postrotate.sh" ] && grep -q USR1 "$LR/postrotate.sh" && sh -n "$LR/postrotate.sh"; then
    ok "postrotate: sends USR1, valid sh syntax"
else
    bad "postrotate: missing, no USR1, or sh -n fails"
fi

# The classic-mode branch for real: /run/systemd/system and the pid file moved to the temporary
# directory (the former absent, so the script takes the pid file), a stand-in process that records
# SIGUSR1.
sed -e "s#/run/systemd/system#$LR/no-systemd#g" -e "s#/run/chatd/chatd.pid#$LR/chatd.pid#g" \
    "$LR/postrotate.sh" >"$LR/postrotate-classic.sh"
bash -c "trap 'touch $LR/usr1; exit 0' USR1; while :; do sleep 0.05; done" &
USR1_PID=$!
echo "$USR1_PID" >"$LR/chatd.pid"
sleep 0.2 # let the trap be installed
if sh "$LR/postrotate-classic.sh" && wait_for 5 test -e "$LR/usr1"; then
    ok "postrotate without systemd: SIGUSR1 reached the pid in the pid file"
else
    bad "postrotate without systemd: no SIGUSR1 arrived"
fi
kill -KILL "$USR1_PID" 2>/dev/null || true
wait "$USR1_PID" 2>/dev/null || true
USR1_PID=
rm -f "$LR/chatd.pid"
if sh "$LR/postrotate-classic.sh"; then
    ok "postrotate with no pid file (chatd not running): exit 0"
else
    bad "postrotate with no pid file fails (logrotate would report an error)"
fi

# A real rotation of the same rules in a temporary directory, postrotate replaced by a marker.
awk -v dir="$LR/log" -v marker="$LR/postrotate.ran" '
    s && /^[[:space:]]*endscript/ { s = 0; print "        touch " marker; print; next }
    s { next }
    /^[[:space:]]*postrotate/ { s = 1; print; next }
    { gsub("/var/log/chatd/", dir "/"); print }' "$LR/chatd" >"$LR/chatd.tmpdir"
chmod 0644 "$LR/chatd.tmpdir"
echo "first day" >"$LR/log/chatd.log"
say "\$ logrotate -f -s $LR/state2 $LR/chatd.tmpdir   (twice; rules with the paths moved to $LR/log)"
rotate() {
    if "$LOGROTATE" -f -s "$LR/state2" "$LR/chatd.tmpdir" >"$LR/run.out" 2>&1 && ! grep -qi '^error' "$LR/run.out"; then
        return 0
    fi
    indent <"$LR/run.out"
    return 1
}
if rotate && grep -qx "first day" "$LR/log/chatd.log.1" && [ -f "$LR/postrotate.ran" ] &&
    [ "$(stat -c '%s %a %U %G' "$LR/log/chatd.log")" = "0 640 $owner $group" ]; then
    ok "rotation 1: chatd.log -> chatd.log.1 (uncompressed), new empty chatd.log 0640 $owner:$group, postrotate ran"
else
    bad "rotation 1: $(cd "$LR/log" && ls -l)"
fi
rm -f "$LR/postrotate.ran"
echo "second day" >"$LR/log/chatd.log"
if rotate && grep -qx "second day" "$LR/log/chatd.log.1" && [ "$(zcat "$LR/log/chatd.log.2.gz" 2>/dev/null)" = "first day" ] &&
    [ -f "$LR/postrotate.ran" ]; then
    ok "rotation 2: chatd.log.1 -> chatd.log.2.gz (delaycompress), postrotate ran"
else
    bad "rotation 2: $(cd "$LR/log" && ls -l)"
fi

# ---- 3. sysctl ----------------------------------------------------------------------------------------
for conf in "$SYSCTL_DIR"/*.conf; do
    section "sysctl ($conf)"
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in '' | '#'* | ';'*) continue ;; esac
        if [[ ! $line =~ ^[[:space:]]*-?([A-Za-z0-9_][A-Za-z0-9_./-]*)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
            bad "not 'key = value': $line"
            continue
        fi
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        path=/proc/sys/${key//.//}
        n=$((n + 1))
        if [ ! -f "$path" ]; then
            bad "$key: no $path"
            continue
        fi
        current=$(tr -s '\t ' '  ' <"$path")
        read -ra want <<<"$value"
        read -ra have <<<"$current"
        if [ ${#want[@]} != ${#have[@]} ]; then
            bad "$key = $value: ${#want[@]} fields, the kernel has ${#have[@]} ($current)"
        elif [[ ! ${value// /} =~ ^[0-9]+$ ]]; then
            bad "$key = $value: not numeric"
        else
            ok "$key = $value   (here now: $current; $path)"
        fi
    done <"$conf"
    [ $n -gt 0 ] || bad "no settings in $conf"
done

section "result"
if [ $failures -gt 0 ]; then
    printf '  deploy check: %d failure(s)\n' "$failures"
    exit 1
fi
printf '  deploy check: all passed\n'
