#!/usr/bin/env bash
# ansible/site.yml for a cluster, run for real: two chatd guests and one guest for Redis and
# Prometheus, each a Debian 12 root booted with its own systemd as PID 1 (boot-guest.sh, as in
# run.sh), on one private network of their own.
#
#   tests/ansible/cluster.sh [PATH-TO-CHATD]   (default: target/release/chatd; run.sh runs first
#                                                and makes the venv and the cached root)
#
# The network: a namespace of this run holds a bridge with one veth to each guest: chat-a
# 198.51.100.11, chat-b .12, store .20 (TEST-NET-2) and fd00:c4a7:1::11/12/20 (a ULA); the bridge
# itself is 198.51.100.100 / fd00:c4a7:1::100, the "outside client". These addresses exist only
# in the namespaces this test creates. Ansible reaches each guest's sshd through a socat forward
# on one 127.0.0.N address of this machine, as run.sh does.
#
# The inventory has the groups chatd (chat-a, chat-b), redis (store) and prometheus (store), and
# each host's private_address: the roles wire themselves from it.
#
#   deploy          Redis: active, bound to 127.0.0.1 and the private address only, the default
#                   user refuses, chatd's user cannot run admin commands, no persistence; the
#                   firewall admits 6379 from the chatd guests only. chatd: [cluster] with the
#                   node name, the password file 0600 owned by chatd, the link up on both. A
#                   person on chat-a is paired with one on chat-b and they chat (IPv4 and IPv6).
#                   /metrics is refused to the outside client. Prometheus: every target up.
#   again           changed=0
#   rolling upgrade a new binary: while a pair is connected on chat-b, chat-a restarts first
#                   (one host at a time) and the pair on chat-b still chats after chat-a is
#                   back; then chat-b is upgraded too, both run the new binary, pairs across
#                   hosts again
#   broken binary   a binary that fails --version: the play stops at chat-a, before chat-b;
#                   both keep their binary and MainPID
#   rollback        -e chatd_rollback=true: both hosts back on the previous binary, one by one
#
# Needs root. KEEP_GUEST=1 keeps the run's directory in $CHATD_TEST_CACHE/runs/.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CHATD_TEST_CACHE:-/var/cache/chatd-test}
VENV=$ROOT/.venv-ansible
T_START=$(date +%s)
T_PHASE=$T_START

say() { printf 'cluster-test: %s\n' "$*"; }
die() {
    printf 'cluster-test: FAILED: %s\n' "$*" >&2
    exit 1
}
phase() {
    local now
    now=$(date +%s)
    printf 'cluster-test: --- %s (previous phase %d s, total %d s)\n' "$1" $((now - T_PHASE)) $((now - T_START))
    T_PHASE=$now
}
check() {
    local what=$1
    shift
    if "$@"; then say "ok: $what"; else die "$what"; fi
}

[ "$(id -u)" = 0 ] || die "must run as root (namespaces, mounts)"
[ -x "$VENV/bin/ansible-playbook" ] || die "no $VENV: run tests/ansible/run.sh first (it installs the tools)"
export PATH=$VENV/bin:$PATH
BIN=$(realpath "${1:-$ROOT/target/release/chatd}")
[ -x "$BIN" ] || die "no executable chatd at $BIN"

phase "debian 12 root (cached in $CACHE)"
mkdir -p "$CACHE/runs"
flock "$CACHE/.lock" bash "$HERE/make-root.sh" "$CACHE/debian12-root" || die "make-root.sh"
RUN=$(mktemp -d "$CACHE/runs/cluster.XXXXXX")
GUESTS=(chat-a chat-b store)
declare -A PRIV4=([chat-a]=198.51.100.11 [chat-b]=198.51.100.12 [store]=198.51.100.20)
declare -A PRIV6=([chat-a]=fd00:c4a7:1::11 [chat-b]=fd00:c4a7:1::12 [store]=fd00:c4a7:1::20)
declare -A GPID BOOT SSHP
LAN_NS=chatdlan$$
CLIENT4=198.51.100.100 CLIENT6=fd00:c4a7:1::100
FWD_PIDS=() KEEP_PID=''
for g in "${GUESTS[@]}"; do
    flock -s "$CACHE/.lock" cp -a "$CACHE/debian12-root" "$RUN/$g"
    echo "$g" >"$RUN/$g/etc/hostname"
done
# This machine cannot make user namespaces inside the guests: Debian's redis-server and prometheus
# units ask for one (PrivateUsers=yes) and would fail with status 217/USER. A drop-in in the test
# root only (not the role) turns that one setting off; the rest of their sandbox stays.
for unit in redis-server prometheus; do
    mkdir -p "$RUN/store/etc/systemd/system/$unit.service.d"
    printf '# tests/ansible/cluster.sh: no user namespaces in this test container.\n[Service]\nPrivateUsers=no\n' \
        >"$RUN/store/etc/systemd/system/$unit.service.d/test-container.conf"
done
install -m 0755 "$BIN" "$RUN/chatd"
BIN=$RUN/chatd
ssh-keygen -q -t ed25519 -N '' -C chatd-cluster-test -f "$RUN/id_ed25519"
for g in "${GUESTS[@]}"; do install -m 0600 "$RUN/id_ed25519.pub" "$RUN/$g/root/.ssh/authorized_keys"; done

G() { # GUEST COMMAND...: a command inside that guest
    local g=$1
    shift
    nsenter -t "${GPID[$g]}" -a -r -w "$@"
}
L() { ip netns exec "$LAN_NS" "$@"; } # a command in the LAN namespace (the outside client)
run_pids() {
    local p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        if [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" == *"$RUN/"* ]] ||
            [[ "$(readlink "/proc/$p/root" 2>/dev/null)" == "$RUN/"* ]]; then
            echo "$p"
        fi
    done
}
host_helpers() { # nsenter/ssh helpers of this run outside the guests
    local p cmd g
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        for g in "${!GPID[@]}"; do
            if [[ $cmd == "nsenter -t ${GPID[$g]} "* || $cmd == *"/proc/${GPID[$g]}/ns/"* ]]; then echo "$p"; fi
        done
        if [[ $cmd == *"$RUN/"* && "$(readlink "/proc/$p/root" 2>/dev/null)" != "$RUN/"* ]]; then echo "$p"; fi
    done | sort -u
}
teardown() {
    local rc=$? p g
    trap - EXIT INT TERM
    set +e
    phase "tear-down"
    if [ $rc -ne 0 ]; then
        for g in "${!GPID[@]}"; do
            kill -0 "${GPID[$g]}" 2>/dev/null || continue
            say "$g's journal, last lines:"
            G "$g" journalctl --no-pager -n 25 -u chatd -u redis-server -u prometheus -u prometheus-redis-exporter 2>&1 |
                sed 's/^/    /'
        done
    fi
    [ -n "$KEEP_PID" ] && kill "$KEEP_PID" 2>/dev/null
    for p in "${FWD_PIDS[@]}"; do kill -- "-$p" 2>/dev/null; done
    for p in $(host_helpers); do kill -KILL "$p" 2>/dev/null; done
    for g in "${!GPID[@]}"; do
        kill -0 "${GPID[$g]}" 2>/dev/null && kill -s RTMIN+4 "${GPID[$g]}"
    done
    for g in "${!GPID[@]}"; do
        for _ in $(seq 100); do kill -0 "${GPID[$g]}" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "${GPID[$g]}" 2>/dev/null; then
            say "$g did not power off within 20 s: killing its PID 1"
            kill -KILL "${GPID[$g]}"
        fi
    done
    for g in "${!BOOT[@]}"; do
        for _ in $(seq 50); do kill -0 "${BOOT[$g]}" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "${BOOT[$g]}" 2>/dev/null; then
            say "$g's namespace did not end"
            rc=1
        else
            wait "${BOOT[$g]}" 2>/dev/null
        fi
    done
    ip netns del "$LAN_NS" 2>/dev/null
    for p in $(run_pids); do kill -KILL "$p" 2>/dev/null; done
    for g in "${GUESTS[@]}"; do
        for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
            [ -d "$h/chatd-cluster-test-$$-$g" ] && find "$h/chatd-cluster-test-$$-$g" -depth -type d -exec rmdir {} \; 2>/dev/null
        done
    done
    left=$(run_pids)
    if [ -n "$left" ]; then
        say "processes left behind: $left"
        rc=1
    fi
    if [ "${KEEP_GUEST:-0}" = 1 ]; then say "kept $RUN"; else rm -rf "$RUN"; fi
    phase "done"
    if [ $rc -eq 0 ]; then say "PASSED in $(($(date +%s) - T_START)) s"; else say "FAILED (exit $rc)"; fi
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

phase "boot three guests (systemd as PID 1 in namespaces), one after the other"
for g in "${GUESTS[@]}"; do
    bash "$HERE/boot-guest.sh" "$RUN/$g" "chatd-cluster-test-$$-$g" >"$RUN/boot-$g.log" 2>&1 &
    BOOT[$g]=$!
    for _ in $(seq 100); do
        for p in $(pgrep -P "${BOOT[$g]}" || true); do
            if [ "$(readlink "/proc/$p/ns/pid")" != "$(readlink /proc/self/ns/pid)" ]; then GPID[$g]=$p; fi
        done
        [ -n "${GPID[$g]:-}" ] && break
        kill -0 "${BOOT[$g]}" 2>/dev/null || { cat "$RUN/boot-$g.log" >&2; die "boot-guest.sh exited for $g"; }
        sleep 0.1
    done
    [ -n "${GPID[$g]:-}" ] || die "$g's PID 1 did not appear"
    for _ in $(seq 100); do
        [ "$(readlink "/proc/${GPID[$g]}/exe" 2>/dev/null)" = "$RUN/$g/usr/lib/systemd/systemd" ] && break
        sleep 0.1
    done
    state=unknown
    for _ in $(seq 300); do
        kill -0 "${GPID[$g]}" 2>/dev/null || { cat "$RUN/boot-$g.log" >&2; die "$g's PID 1 exited"; }
        state=$(timeout 90 nsenter -t "${GPID[$g]}" -a -r -w systemctl is-system-running --wait 2>&1) || true
        [[ $state == *"connect to bus"* ]] || break
        sleep 0.1
    done
    [ "$state" = running ] || { G "$g" systemctl --failed --no-pager >&2 || true; die "$g's systemd is '$state'"; }
    G "$g" hostname "$g"
    say "ok: $g booted (host pid ${GPID[$g]})"
done

phase "network: the private network, ssh forwards"
ADDR=127.0.0.$((2 + ($$ + 97) % 250))
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$ADDR"; }
ip netns add "$LAN_NS"
L ip link add br0 type bridge
L ip link set br0 up
L ip link set lo up
L ip addr add "$CLIENT4/24" dev br0
L ip addr add "$CLIENT6/64" dev br0 nodad
i=0
for g in "${GUESTS[@]}"; do
    i=$((i + 1))
    ip link add "kg$$x$i" type veth peer name "kl$$x$i"
    ip link set "kg$$x$i" netns "${GPID[$g]}"
    ip link set "kl$$x$i" netns "$LAN_NS"
    L ip link set "kl$$x$i" master br0 up
    G "$g" ip link set "kg$$x$i" name eth0
    G "$g" ip addr add "${PRIV4[$g]}/24" dev eth0
    G "$g" ip addr add "${PRIV6[$g]}/64" dev eth0 nodad
    G "$g" ip link set eth0 up
    SSHP[$g]=$(free_port)
    printf '#!/bin/sh\nexec nsenter --net=/proc/%s/ns/net socat STDIO TCP4:127.0.0.1:22\n' "${GPID[$g]}" >"$RUN/fwd-$g.sh"
    chmod 0755 "$RUN/fwd-$g.sh"
    setsid socat "TCP4-LISTEN:${SSHP[$g]},bind=$ADDR,reuseaddr,fork" "EXEC:$RUN/fwd-$g.sh" 2>>"$RUN/socat.log" &
    FWD_PIDS+=($!)
done
for g in "${GUESTS[@]}"; do
    for _ in $(seq 50); do
        ssh -q -i "$RUN/id_ed25519" -p "${SSHP[$g]}" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 "root@$ADDR" true && break
        sleep 0.2
    done
done
probe() { # FROM(guest|lan) ADDR PORT: open | refused | dropped
    local rc=0 from=$1
    if [ "$from" = lan ]; then
        L timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null || rc=$?
    else
        G "$from" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null || rc=$?
    fi
    case $rc in 0) echo open ;; 124) echo dropped ;; *) echo refused ;; esac
}
check "chat-a reaches chat-b on the private network (ssh port)" [ "$(probe chat-a "${PRIV4[chat-b]}" 22)" = open ]
check "the outside client reaches store over IPv6" [ "$(probe lan "${PRIV6[store]}" 22)" = open ]

cat >"$RUN/inventory.ini" <<EOF
[chatd]
chat-a ansible_host=$ADDR ansible_port=${SSHP[chat-a]} private_address=${PRIV4[chat-a]}
chat-b ansible_host=$ADDR ansible_port=${SSHP[chat-b]} private_address=${PRIV4[chat-b]}

[redis]
store ansible_host=$ADDR ansible_port=${SSHP[store]} private_address=${PRIV4[store]}

[prometheus]
store

[all:vars]
ansible_user=root
ansible_ssh_private_key_file=$RUN/id_ed25519
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'
ansible_python_interpreter=/usr/bin/python3
chatd_log_level=debug
prometheus_scrape_interval=2s
EOF
export ANSIBLE_HOME=$RUN/ansible-home ANSIBLE_LOCAL_TEMP=$RUN/ansible-tmp ANSIBLE_NOCOLOR=1
export ANSIBLE_PIPELINING=1 ANSIBLE_SSH_ARGS='-o ControlMaster=auto -o ControlPersist=30s'
export ANSIBLE_SSH_CONTROL_PATH_DIR=$RUN/cp

PLAY_LOG='' CHANGED=''
play() { # NAME [args]: site.yml on the whole inventory; PLAY_LOG, CHANGED (sum over hosts)
    local name=$1 t0 rc=0
    shift
    PLAY_LOG=$RUN/play-$name.log
    t0=$(date +%s)
    (cd "$ROOT" && ansible-playbook -i "$RUN/inventory.ini" ansible/site.yml \
        -e "chatd_binary_src=$BIN" "$@") >"$PLAY_LOG" 2>&1 || rc=$?
    CHANGED=$(sed -n 's/^[a-z-]* *: ok=.* changed=\([0-9]*\).*/\1/p' "$PLAY_LOG" | awk '{ s += $1 } END { print s + 0 }')
    say "playbook '$name': rc $rc, $(($(date +%s) - t0)) s: $(grep -E '^[a-z-]+ +: ok=' "$PLAY_LOG" | awk '{print $1 ":" $3 "," $4 "," $6}' | tr '\n' ' ')"
    return $rc
}
play_ok() {
    play "$@" || {
        tail -n 40 "$PLAY_LOG" >&2
        die "playbook '$1' failed (log: $PLAY_LOG)"
    }
}
mainpid() { G "$1" systemctl show -p MainPID --value chatd; }
wscheck() { # exit 3 = the check stalled as a whole (wscheck.py): tried once more then
    local rc=0
    L "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?
    [ $rc = 3 ] && { say "wscheck stalled, once more: $*"; rc=0; L "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?; }
    [ $rc = 0 ] || die "wscheck $*"
}
metric() { # GUEST NAME: the value of an unlabelled metric of chatd, read inside the guest
    G "$1" curl -fsS --max-time 5 http://127.0.0.1/metrics | awk -v m="$2" '$1 == m { print $2 }'
}
rcli() { # ARGS...: redis-cli on store as chatd's user
    G store env REDISCLI_AUTH="$(cat "$RUN/credentials/redis-chatd.password")" \
        redis-cli -h 127.0.0.1 --user chatd --no-auth-warning "$@"
}

phase "playbook: deploy (Redis, two chatd, Prometheus)"
play_ok deploy
check "redis-server is active on store" G store systemctl is-active --quiet redis-server
listening6379=$(G store ss -Hltn 'sport = :6379' | awk '{print $4}' | sort | tr '\n' ' ')
check "Redis listens on 127.0.0.1 and the private address only (got: $listening6379)" \
    [ "$listening6379" = "127.0.0.1:6379 ${PRIV4[store]}:6379 " ]
check "the generated password is kept on the controller (0600)" \
    [ "$(stat -c %a "$RUN/credentials/redis-chatd.password")" = 600 ]
out=$(G store redis-cli -h 127.0.0.1 PING 2>&1 || true)
check "the default user refuses ($out)" grep -q NOAUTH <<<"$out"
check "chatd's user logs in" [ "$(rcli PING)" = PONG ]
out=$(rcli CONFIG GET save 2>&1 || true)
[[ $out == *NOPERM* ]] || die "chatd's user ran CONFIG GET: $out"
out=$(rcli SET other:key 1 2>&1 || true)
[[ $out == *NOPERM* ]] || die "chatd's user wrote a key outside its prefix: $out"
say "ok: chatd's user is refused CONFIG GET and keys outside chatd:*"
check "no persistence (save \"\", appendonly no)" grep -qx 'save ""' "$RUN/store/etc/redis/redis.conf"
check "... appendonly no" grep -qx 'appendonly no' "$RUN/store/etc/redis/redis.conf"
for g in chat-a chat-b; do
    check "$g: chatd active" G "$g" systemctl is-active --quiet chatd
    check "$g: [cluster] names node $g and Redis at ${PRIV4[store]}" \
        grep -qx "node = \"$g\"" "$RUN/$g/etc/chatd/chatd.toml"
    grep -qx "redis = \"redis://chatd@${PRIV4[store]}:6379/0\"" "$RUN/$g/etc/chatd/chatd.toml" || die "$g: redis URL"
    check "$g: the password file is chatd's, mode 600" \
        [ "$(G "$g" stat -c '%U %a' /etc/chatd/redis.password)" = "chatd 600" ]
    check "$g: the password is in no URL" bash -c "! grep -q \"\$(cat '$RUN/credentials/redis-chatd.password')\" '$RUN/$g/etc/chatd/chatd.toml'"
    check "$g: the address key is chatd's, mode 600, the controller's generated one" \
        [ "$(G "$g" stat -c '%U %a' /etc/chatd/address.key)" = "chatd 600" ]
    [ "$(cat "$RUN/credentials/chatd-address.key")" = "$(cat "$RUN/$g/etc/chatd/address.key")" ] ||
        die "$g: /etc/chatd/address.key is not credentials/chatd-address.key"
    grep -qx 'address_key_file = "/etc/chatd/address.key"' "$RUN/$g/etc/chatd/chatd.toml" ||
        die "$g: chatd.toml does not name the address key"
    for _ in $(seq 50); do [ "$(metric "$g" chatd_cluster_link_up)" = 1 ] && break; sleep 0.2; done
    check "$g: chatd_cluster_link_up is 1" [ "$(metric "$g" chatd_cluster_link_up)" = 1 ]
done
check "Redis is reachable from chat-a" [ "$(probe chat-a "${PRIV4[store]}" 6379)" = open ]
check "Redis is dropped for the outside client (IPv4)" [ "$(probe lan "${PRIV4[store]}" 6379)" = dropped ]
check "... and over IPv6" [ "$(probe lan "${PRIV6[store]}" 6379)" = dropped ]
wscheck pair "ws://${PRIV4[chat-a]}/ws" --b "ws://${PRIV4[chat-b]}/ws"
say "ok: a person on chat-a was paired with one on chat-b and they chatted (IPv4)"
wscheck pair "ws://[${PRIV6[chat-a]}]/ws" --b "ws://[${PRIV6[chat-b]}]/ws"
say "ok: ... and over IPv6"
# (Each client connects to its own host, so each pair crossed; the counter confirms Redis did it.
# A node refreshes its cluster families once a second: wait for them.)
for _ in $(seq 25); do
    cross=$(( $(metric chat-a chatd_cluster_cross_matches_total) + $(metric chat-b chatd_cluster_cross_matches_total) ))
    [ "$cross" -ge 1 ] && break
    sleep 0.2
done
check "the nodes counted cross-host matches (chatd_cluster_cross_matches_total: $cross)" [ "$cross" -ge 1 ]
code=$(L curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://${PRIV4[chat-a]}/metrics" || true)
check "/metrics is refused to the outside client ($code)" [ "$code" = 403 -o "$code" = 404 ]
targets=''
for _ in $(seq 60); do
    targets=$(G store curl -fsS --max-time 5 http://127.0.0.1:9090/api/v1/targets 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(" ".join(sorted(x["labels"]["job"] + "/" + x["labels"].get("node", "-") + "=" + x["health"] for x in t)))' 2>/dev/null || true)
    [ "$targets" = "chatd/chat-a=up chatd/chat-b=up prometheus/-=up redis/store=up" ] && break
    sleep 1
done
check "Prometheus sees every target up ($targets)" \
    [ "$targets" = "chatd/chat-a=up chatd/chat-b=up prometheus/-=up redis/store=up" ]
redis_up=$(G store curl -fsS --max-time 5 "http://127.0.0.1:9090/api/v1/query?query=redis_up" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["result"][0]["value"][1])')
check "the exporter logs in to Redis (redis_up $redis_up)" [ "$redis_up" = 1 ]

phase "playbook: second run"
play_ok again
[ "$CHANGED" = 0 ] || { grep -E '^changed:' -B2 "$PLAY_LOG" >&2; die "the second run changed $CHANGED"; }
say "ok: idempotent (changed=0 on every host)"

phase "playbook: rolling upgrade, one host at a time"
cp "$BIN" "$RUN/chatd-new" && printf '\n' >>"$RUN/chatd-new"
A1=$(mainpid chat-a) B1=$(mainpid chat-b)
mkdir -p "$RUN/keep"
L "$VENV/bin/python" "$HERE/wscheck.py" keep "ws://${PRIV4[chat-b]}/ws" "$RUN/keep" >"$RUN/keep.log" 2>&1 &
KEEP_PID=$!
for _ in $(seq 100); do [ -e "$RUN/keep/paired" ] && break; sleep 0.1; done
[ -e "$RUN/keep/paired" ] || { cat "$RUN/keep.log" >&2; die "the pair on chat-b did not connect"; }
play upgrade -e "chatd_binary_src=$RUN/chatd-new" &
PLAY_PID=$!
# Once chat-a runs a new process and is healthy again, the pair on chat-b must still chat.
seen=''
for _ in $(seq 1200); do
    if [ "$(mainpid chat-a)" != "$A1" ] && [ "$(mainpid chat-b)" = "$B1" ] &&
        G chat-a curl -fsS -o /dev/null --max-time 2 http://127.0.0.1/healthz 2>/dev/null; then
        touch "$RUN/keep/check"
        for _ in $(seq 50); do [ -e "$RUN/keep/checked" ] && break; sleep 0.1; done
        [ "$(mainpid chat-b)" = "$B1" ] && [ -e "$RUN/keep/checked" ] && seen=1
        break
    fi
    kill -0 "$PLAY_PID" 2>/dev/null || break
    sleep 0.1
done
PLAY_LOG=$RUN/play-upgrade.log # play ran in a subshell
wait "$PLAY_PID" || { tail -n 40 "$PLAY_LOG" >&2; die "the rolling upgrade failed (log: $PLAY_LOG)"; }
touch "$RUN/keep/done"
wait "$KEEP_PID" || { cat "$RUN/keep.log" >&2; die "the pair on chat-b"; }
KEEP_PID=''
check "while chat-a restarted (and chat-b not yet), the pair on chat-b stayed connected and chatted" [ -n "$seen" ]
A2=$(mainpid chat-a) B2=$(mainpid chat-b)
check "then chat-b was upgraded too ($B1 -> $B2)" [ "$B2" != "$B1" ]
for g in chat-a chat-b; do
    check "$g runs the new binary" cmp -s "$RUN/chatd-new" "$RUN/$g/usr/local/bin/chatd"
    check "$g keeps the old one as chatd.previous" cmp -s "$BIN" "$RUN/$g/usr/local/bin/chatd.previous"
done
order=$(grep -E '^RUNNING HANDLER \[chatd : Restart chatd\]' -A1 "$PLAY_LOG" | sed -n 's/^changed: \[\(.*\)\]/\1/p' | tr '\n' ' ')
check "restarted one host at a time, chat-a first ($order)" [ "$order" = "chat-a chat-b " ]
wscheck pair "ws://${PRIV4[chat-a]}/ws" --b "ws://${PRIV4[chat-b]}/ws"
say "ok: pairs across hosts after the upgrade"

phase "playbook: a broken binary stops the rollout at the first host"
printf '#!/bin/sh\nexit 1\n' >"$RUN/chatd-broken" && chmod 0755 "$RUN/chatd-broken"
if play broken -e "chatd_binary_src=$RUN/chatd-broken"; then die "the playbook installed a broken binary"; fi
failed=$(awk '/^(TASK|RUNNING HANDLER) \[/ { t = $0 } /^fatal:/ { print t " " $2; exit }' "$PLAY_LOG")
[[ $failed == "TASK [chatd : Run the staged binary on the host"*"[chat-a]:" ]] ||
    die "the play failed at '$failed', not at chat-a's staged check (log: $PLAY_LOG)"
! grep -qE '^(ok|changed|fatal): \[chat-b\]' "$PLAY_LOG" || die "the rollout went on to chat-b after chat-a failed"
say "ok: the play failed at chat-a's staged --version check and never reached chat-b"
for g in chat-a chat-b; do
    check "$g still runs the same binary" cmp -s "$RUN/chatd-new" "$RUN/$g/usr/local/bin/chatd"
done
check "same MainPIDs ($A2, $B2)" [ "$(mainpid chat-a)" = "$A2" -a "$(mainpid chat-b)" = "$B2" ]
wscheck pair "ws://${PRIV4[chat-a]}/ws" --b "ws://${PRIV4[chat-b]}/ws"

phase "playbook: rollback (-e chatd_rollback=true)"
play_ok rollback -e chatd_rollback=true
for g in chat-a chat-b; do
    check "$g is back on the previous binary" cmp -s "$BIN" "$RUN/$g/usr/local/bin/chatd"
    check "$g keeps the rolled-back one as chatd.previous" cmp -s "$RUN/chatd-new" "$RUN/$g/usr/local/bin/chatd.previous"
done
check "both restarted" [ "$(mainpid chat-a)" != "$A2" -a "$(mainpid chat-b)" != "$B2" ]
wscheck pair "ws://${PRIV4[chat-a]}/ws" --b "ws://${PRIV4[chat-b]}/ws"

say "all checks passed"
