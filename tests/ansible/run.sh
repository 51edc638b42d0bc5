#!/usr/bin/env bash
# The Ansible role and playbook (ansible/), linted and then run for real against a fresh Debian 12
# host on this machine.
#
#   tests/ansible/run.sh [PATH-TO-CHATD]     (default: cargo build --release, target/release/chatd)
#
# 1. Tools: Debian packages (debootstrap, socat, ...) with apt-get; Ansible 12 (ansible-core 2.19),
#    ansible-lint and websockets from PyPI into .venv-ansible/ (git-ignored), per
#    tests/ansible/requirements.txt.
# 2. Static: ansible-lint (production profile, ansible/.ansible-lint), ansible-playbook
#    --syntax-check, check_specs.py (defaults <-> argument_specs of the roles chatd, redis and
#    prometheus, every config key rendered); the roles' templates rendered for a cluster inventory
#    (render/), Prometheus' files checked with promtool check config / check rules, and the
#    alerts unit-tested (promtool test rules render/alerts.test.yml).
# 3. The host: a Debian 12 root made once by debootstrap and cached in $CHATD_TEST_CACHE
#    (default /var/cache/chatd-test; make-root.sh), copied for this run and booted with its own
#    systemd as PID 1 in new namespaces, its own network namespace included (boot-guest.sh).
#    The controller reaches it only through ports on one loopback address 127.0.0.N of this
#    machine, forwarded by socat into the guest's namespace (SSH to its port 22, HTTP 80, 8081,
#    HTTPS 443). The firewall is probed, and the page, /ws and Caddy are reached as an outside
#    client would, from a second namespace linked to the guest by a veth pair on 192.0.2.0/24
#    (TEST-NET-1) and fd00:c4a7::/64 (a private IPv6 ULA): addresses that exist only inside the
#    two namespaces this test creates, so no packet leaves the machine or reaches any other
#    address. chatd logs at debug level throughout, so its log shows every client address.
# 4. The playbook, run the way terraform/ runs it (INI inventory, group [chatd], root over SSH):
#      deploy            chatd active and enabled, running as chatd on [::]:80 (dual-stack), page
#                        served (GET / 200), two WebSocket clients matched and chatting, over
#                        IPv4 and IPv6 from the client namespace too, logged with their own
#                        address (IPv4 not as ::ffff:a.b.c.d, a forged X-Forwarded-For ignored),
#                        kernel settings applied in the guest only, conntrack sized, the
#                        rollout's /healthz and version gate passed, firewall: 22 and 80 open,
#                        other ports dropped, over IPv4 and IPv6
#      again             changed=0
#      reload            chatd_max_message_chars and chatd_trusted_proxies changed while a pair
#                        is connected: same MainPID, no restart handler, the pair stays connected
#                        and is held to the new limit, new clients are told it; the client
#                        namespace, now a trusted proxy, is judged by its X-Forwarded-For
#      bad value         chatd_max_connections=0: the play fails at `chatd -t`, the file and the
#                        running chatd are untouched
#      listen            chatd_listen port changed: restarted (new MainPID), new port serves, the
#                        old one is closed and the firewall follows
#      again             changed=0
#      binary            a different binary: restarted (staged and run with --version on the host
#                        first, the old one kept as chatd.previous, /healthz and version checked)
#      broken binary     a script failing --version, and an ELF for another architecture: the
#                        play fails at the staged check, the installed binary and MainPID stay
#      rollback          -e chatd_rollback=true: chatd.previous swapped back in, restarted
#      https             chatd_domain=chat.test with Caddy's internal CA: chatd moves to
#                        127.0.0.1:8080 and trusts 127.0.0.1, HSTS, HTTPS GET / 200 (from the host and
#                        inside the guest), http:// redirects, wss:// clients match through
#                        Caddy, also from the client namespace over IPv4 and IPv6, where chatd's
#                        log shows the client's own address (not 127.0.0.1, not a forged
#                        X-Forwarded-For); /metrics through Caddy is 404 from everywhere while
#                        chatd still serves it on 127.0.0.1:8080; a foreign Origin gets 403,
#                        firewall: 80 and 443 open, 8080 dropped
#      again             changed=0
#      no domain again   Caddy removed, chatd back on port 80
#    tests/ansible/cluster.sh (run after this by ./scripts/test) does the same for a cluster.
# 5. Tear-down (also on failure): guest powered off, forwarders and namespaces removed, cgroups
#    removed, the run's copy deleted; then a check that no process of this run is left.
#
# Every step fails loudly; nothing is skipped. Needs root (namespaces, mounts, apt-get).
# KEEP_GUEST=1 leaves the run's directory (logs, root copy) in $CHATD_TEST_CACHE/runs/.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CHATD_TEST_CACHE:-/var/cache/chatd-test}
VENV=$ROOT/.venv-ansible
# The role's chatd_address_key in every play (see short_hash).
ADDRESS_KEY=ansible-harness-address-key-2026
T_START=$(date +%s)
T_PHASE=$T_START

say() { printf 'ansible-test: %s\n' "$*"; }
die() {
    printf 'ansible-test: FAILED: %s\n' "$*" >&2
    exit 1
}
phase() { # NAME: prints the time the previous phase took
    local now
    now=$(date +%s)
    printf 'ansible-test: --- %s (previous phase %d s, total %d s)\n' "$1" $((now - T_PHASE)) $((now - T_START))
    T_PHASE=$now
}
check() { # DESCRIPTION COMMAND...: runs the command, fails the test if it fails
    local what=$1
    shift
    if "$@"; then
        say "ok: $what"
    else
        die "$what"
    fi
}

[ "$(id -u)" = 0 ] || die "must run as root (namespaces, mounts, apt-get)"

# ---- 1. tools ---------------------------------------------------------------------------------
phase "tools"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v socat >/dev/null || missing+=(socat)
command -v apt-ftparchive >/dev/null || missing+=(apt-utils)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v flock >/dev/null || missing+=(util-linux)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v promtool >/dev/null || missing+=(prometheus) # promtool, for the role prometheus' files
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    # A policy-rc.d answering 101 keeps packages (prometheus) from starting their service here.
    made_policy=''
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
    say "creating $VENV (pip install -r tests/ansible/requirements.txt)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
    echo "$want" >"$VENV/.requirements.sha256"
fi
export PATH=$VENV/bin:$PATH
say "$(ansible-playbook --version | head -n 1); $(NO_COLOR=1 ansible-lint --version 2>/dev/null | head -n 1)"

# ---- the binary ---------------------------------------------------------------------------------
if [ $# -ge 1 ]; then
    BIN=$(realpath "$1")
else
    (cd "$ROOT" && cargo build --locked --release --quiet --bin chatd)
    BIN=$ROOT/target/release/chatd
fi
[ -x "$BIN" ] || die "no executable chatd at $BIN"
say "binary: $BIN ($("$BIN" --version))"

# ---- 2. static checks ----------------------------------------------------------------------------
phase "static checks"
(cd "$ROOT/ansible" && ansible-lint --nocolor) || die "ansible-lint (production profile)"
(cd "$ROOT" && ansible-playbook -i ansible/inventory.example.ini ansible/site.yml --syntax-check) ||
    die "ansible-playbook --syntax-check"
"$VENV/bin/python" "$HERE/check_specs.py" || die "role variables (check_specs.py)"
# The roles' templates rendered for a cluster inventory (two chatd, Redis and Prometheus) on this
# machine; Prometheus' files checked by promtool, and the alerts tested on made-up series.
RENDER=$(mktemp -d)
(cd "$ROOT" && ANSIBLE_LOCAL_TEMP=$RENDER/.tmp ANSIBLE_HOME=$RENDER/.home ansible-playbook \
    -i tests/ansible/render/inventory.ini tests/ansible/render/render.yml -e "out=$RENDER" \
    -e chatd_cluster_password=render-test -e redis_chatd_password=render-test \
    -e redis_exporter_password=render-test) >"$RENDER/render.log" 2>&1 ||
    { cat "$RENDER/render.log" >&2; die "rendering the roles' templates (tests/ansible/render/render.yml)"; }
promtool check config "$RENDER/prometheus/prometheus.yml" >"$RENDER/promtool.log" 2>&1 ||
    { cat "$RENDER/promtool.log" >&2; die "promtool check config (role prometheus)"; }
promtool check rules "$RENDER/prometheus/rules/chatd.yml" >>"$RENDER/promtool.log" 2>&1 ||
    { cat "$RENDER/promtool.log" >&2; die "promtool check rules (role prometheus)"; }
cp "$HERE/render/alerts.test.yml" "$RENDER/prometheus/"
promtool test rules "$RENDER/prometheus/alerts.test.yml" >>"$RENDER/promtool.log" 2>&1 ||
    { cat "$RENDER/promtool.log" >&2; die "promtool test rules (tests/ansible/render/alerts.test.yml)"; }
grep -q 'redis = "redis://chatd@198.51.100.20:6379/0"' "$RENDER/chat-a.chatd.toml" &&
    grep -q 'node = "chat-a"' "$RENDER/chat-a.chatd.toml" &&
    grep -qF 'metrics_allow = ["127.0.0.1", "::1", "198.51.100.20"]' "$RENDER/chat-a.chatd.toml" ||
    { cat "$RENDER/chat-a.chatd.toml" >&2; die "chatd.toml for a cluster inventory lacks the [cluster] table or the scraper"; }
grep -qx 'bind 127.0.0.1 198.51.100.20' "$RENDER/store.redis.conf" && grep -qx 'save ""' "$RENDER/store.redis.conf" ||
    die "redis.conf: not bound to loopback and the private address, or persistence on"
say "ok: templates rendered for a cluster inventory; promtool check config, check rules and test rules pass"
rm -rf "$RENDER"

# ---- 3. the host ----------------------------------------------------------------------------------
phase "debian 12 root (cached in $CACHE)"
mkdir -p "$CACHE/runs"
# One builder at a time; a root being built by another run is waited for, not rebuilt.
flock "$CACHE/.lock" bash "$HERE/make-root.sh" "$CACHE/debian12-root" ||
    die "building the Debian 12 root with debootstrap (make-root.sh)"
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
GUEST=$RUN/root
CG=chatd-ansible-test-$$
CLIENT_NS=chatdtest$$
BOOT_PID='' GPID='' HOLD_PID=''
FWD_PIDS=()
flock -s "$CACHE/.lock" cp -a "$CACHE/debian12-root" "$GUEST"
# A copy of the binary: a build running meanwhile (target/ is shared) must not change it mid-test.
install -m 0755 "$BIN" "$RUN/chatd"
BIN=$RUN/chatd
ssh-keygen -q -t ed25519 -N '' -C chatd-ansible-test -f "$RUN/id_ed25519"
install -m 0600 "$RUN/id_ed25519.pub" "$GUEST/root/.ssh/authorized_keys"

G() { nsenter -t "$GPID" -a -r -w "$@"; } # a command inside the guest
run_pids() { # every process whose command line or cwd points into this run's directory
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
host_helpers() { # processes of this run outside the guest: they name $RUN or enter the guest
    local p cmd
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        if [[ -n $GPID && ($cmd == "nsenter -t $GPID "* || $cmd == *"/proc/$GPID/ns/"*) ]]; then
            echo "$p"
        elif [[ $cmd == *"$RUN/"* && "$(readlink "/proc/$p/root" 2>/dev/null)" != "$GUEST" ]]; then
            echo "$p"
        fi
    done
}
teardown() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    phase "tear-down"
    if [ $rc -ne 0 ] && [ -n "$GPID" ] && kill -0 "$GPID" 2>/dev/null; then
        say "the guest's journal (chatd, caddy, nftables), last lines:"
        G journalctl --no-pager -n 60 -u chatd -u caddy -u nftables 2>&1 | sed 's/^/    /'
    fi
    [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null
    for p in "${FWD_PIDS[@]}"; do kill -- "-$p" 2>/dev/null; done
    # Helpers on this side that entered the guest (nsenter parents of forwarders, ssh control
    # masters): an nsenter that never reaps its child would keep the PID namespace from ending.
    for p in $(host_helpers); do kill -KILL "$p" 2>/dev/null; done
    say "stopping the guest"
    if [ -n "$GPID" ] && kill -0 "$GPID" 2>/dev/null; then
        # SIGRTMIN+4 asks systemd (PID 1) to power off; it needs no D-Bus.
        kill -s RTMIN+4 "$GPID"
        for i in $(seq 100); do
            kill -0 "$GPID" 2>/dev/null || break
            if [ "$i" = 25 ]; then
                say "the guest is still stopping after 5 s; its jobs and processes:"
                G systemctl list-jobs --no-pager 2>&1 | sed 's/^/    /'
                G ps -eo pid,stat,cmd 2>&1 | sed 's/^/    /'
            fi
            sleep 0.2
        done
        if kill -0 "$GPID" 2>/dev/null; then
            say "the guest did not power off within 20 s: killing its PID 1"
            kill -KILL "$GPID"
        fi
    fi
    if [ -n "$BOOT_PID" ]; then
        for _ in $(seq 50); do kill -0 "$BOOT_PID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$BOOT_PID" 2>/dev/null; then
            say "the guest's namespace did not end: $(pgrep -P "$BOOT_PID" -a)"
            rc=1
        else
            wait "$BOOT_PID" 2>/dev/null
        fi
    fi
    ip netns del "$CLIENT_NS" 2>/dev/null
    for p in $(run_pids); do kill -KILL "$p" 2>/dev/null; done
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        [ -d "$h/$CG" ] && find "$h/$CG" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    left=$(run_pids)
    if [ -n "$left" ]; then
        say "processes left behind: $left"
        rc=1
    fi
    if [ "${KEEP_GUEST:-0}" = 1 ]; then
        say "kept $RUN"
    else
        rm -rf "$RUN"
    fi
    phase "done"
    if [ $rc -eq 0 ]; then say "PASSED in $(($(date +%s) - T_START)) s"; else say "FAILED (exit $rc)"; fi
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

phase "boot the guest (systemd as PID 1 in namespaces)"
bash "$HERE/boot-guest.sh" "$GUEST" "$CG" >"$RUN/boot.log" 2>&1 &
BOOT_PID=$!
for _ in $(seq 100); do
    for p in $(pgrep -P "$BOOT_PID" || true); do
        # The guest's init: a child of unshare in another PID namespace.
        if [ "$(readlink "/proc/$p/ns/pid")" != "$(readlink /proc/self/ns/pid)" ]; then GPID=$p; fi
    done
    [ -n "$GPID" ] && break
    kill -0 "$BOOT_PID" 2>/dev/null || { cat "$RUN/boot.log" >&2; die "boot-guest.sh exited"; }
    sleep 0.1
done
[ -n "$GPID" ] || die "the guest's PID 1 did not appear"
for _ in $(seq 100); do
    [ "$(readlink "/proc/$GPID/exe" 2>/dev/null)" = "$GUEST/usr/lib/systemd/systemd" ] && break
    sleep 0.1
done
# Until its D-Bus is up, systemctl cannot ask; then --wait waits for the boot to finish.
state=unknown
for _ in $(seq 300); do
    state=$(timeout 90 nsenter -t "$GPID" -a -r -w systemctl is-system-running --wait 2>&1) || true
    [[ $state == *"connect to bus"* ]] || break
    sleep 0.1
done
if [ "$state" != running ]; then
    G systemctl --failed --no-pager >&2 || true
    die "the guest's systemd is '$state', not 'running'"
fi
say "ok: guest booted, systemd $(G systemctl --version | head -n 1 | cut -d' ' -f2) is 'running' (host pid $GPID)"

phase "network: loopback port forwards and a client namespace"
# One loopback address for this run; ports the kernel hands out on it.
ADDR=127.0.0.$((2 + $$ % 250))
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$ADDR"; }
forward() { # HOST_PORT GUEST_PORT: $ADDR:HOST_PORT on this machine -> 127.0.0.1:GUEST_PORT in the guest
    printf '#!/bin/sh\nexec nsenter --net=/proc/%s/ns/net socat STDIO TCP4:127.0.0.1:%s\n' "$GPID" "$2" \
        >"$RUN/fwd-$2.sh"
    chmod 0755 "$RUN/fwd-$2.sh"
    setsid socat "TCP4-LISTEN:$1,bind=$ADDR,reuseaddr,fork" "EXEC:$RUN/fwd-$2.sh" 2>>"$RUN/socat.log" &
    FWD_PIDS+=($!)
}
SSH_PORT=$(free_port) && forward "$SSH_PORT" 22
HTTP_PORT=$(free_port) && forward "$HTTP_PORT" 80
ALT_PORT=$(free_port) && forward "$ALT_PORT" 8081
HTTPS_PORT=$(free_port) && forward "$HTTPS_PORT" 443
say "guest ports on this machine: ssh $ADDR:$SSH_PORT, http $ADDR:$HTTP_PORT, 8081 -> $ADDR:$ALT_PORT, https $ADDR:$HTTPS_PORT"
# The client namespace: eth0 in the guest (192.0.2.1, fd00:c4a7::1) <-> the client (192.0.2.2,
# fd00:c4a7::2). nodad: the IPv6 addresses are usable at once, not after duplicate detection.
GUEST4=192.0.2.1 CLIENT4=192.0.2.2 GUEST6=fd00:c4a7::1 CLIENT6=fd00:c4a7::2
ip netns add "$CLIENT_NS"
ip link add "cg$$" type veth peer name "cc$$"
ip link set "cg$$" netns "$GPID"
ip link set "cc$$" netns "$CLIENT_NS"
G ip link set "cg$$" name eth0
G ip addr add "$GUEST4/24" dev eth0
G ip addr add "$GUEST6/64" dev eth0 nodad
G ip link set eth0 up
ip -n "$CLIENT_NS" addr add "$CLIENT4/24" dev "cc$$"
ip -n "$CLIENT_NS" addr add "$CLIENT6/64" dev "cc$$" nodad
ip -n "$CLIENT_NS" link set "cc$$" up
ip -n "$CLIENT_NS" link set lo up
C() { ip netns exec "$CLIENT_NS" "$@"; } # a command in the client namespace
probe() { # PORT [GUEST_ADDR]: open | refused | dropped, as seen from the client namespace
    local rc=0
    C timeout 3 bash -c "exec 3<>/dev/tcp/${2:-$GUEST4}/$1" 2>/dev/null || rc=$?
    case $rc in 0) echo open ;; 124) echo dropped ;; *) echo refused ;; esac
}
expect_port() { # PORT STATE: over IPv4 and IPv6
    local got addr
    for addr in "$GUEST4" "$GUEST6"; do
        got=$(probe "$1" "$addr")
        [ "$got" = "$2" ] || die "firewall: port $1 of $addr from the client namespace is $got, want $2"
    done
    say "ok: firewall: port $1 is $2 (IPv4 and IPv6)"
}
# Before any firewall: everything that listens is reachable (so 'dropped' later means the firewall).
check "the guest's sshd is reachable from the client namespace before the role runs" \
    [ "$(probe 22)" = open ]
check "... over IPv6 too ([$GUEST6]:22)" [ "$(probe 22 "$GUEST6")" = open ]
for _ in $(seq 50); do
    ssh -q -i "$RUN/id_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 "root@$ADDR" true && break
    sleep 0.2
done
check "ssh root@$ADDR:$SSH_PORT with the run's key" ssh -q -i "$RUN/id_ed25519" -p "$SSH_PORT" \
    -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "root@$ADDR" true

# ---- 4. the playbook ------------------------------------------------------------------------------
# The inventory in the shape terraform/ renders, plus how to reach this guest.
cat >"$RUN/inventory.ini" <<EOF
[chatd]
guest ansible_host=$ADDR ansible_port=$SSH_PORT ansible_user=root

[chatd:vars]
chatd_domain=
chatd_log_level=debug
ansible_ssh_private_key_file=$RUN/id_ed25519
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'
ansible_python_interpreter=/usr/bin/python3
EOF
export ANSIBLE_HOME=$RUN/ansible-home ANSIBLE_LOCAL_TEMP=$RUN/ansible-tmp ANSIBLE_NOCOLOR=1
export ANSIBLE_PIPELINING=1 ANSIBLE_SSH_ARGS='-o ControlMaster=auto -o ControlPersist=30s'
export ANSIBLE_SSH_CONTROL_PATH_DIR=$RUN/cp

PLAY_LOG='' CHANGED=''
play() { # NAME [ansible-playbook args]: runs site.yml; sets PLAY_LOG and CHANGED
    local name=$1 t0 rc=0
    shift
    PLAY_LOG=$RUN/play-$name.log
    t0=$(date +%s)
    (cd "$ROOT" && ansible-playbook -i "$RUN/inventory.ini" ansible/site.yml \
        -e "chatd_binary_src=$BIN" -e "chatd_address_key=$ADDRESS_KEY" "$@") >"$PLAY_LOG" 2>&1 || rc=$?
    local recap
    recap=$(grep -E '^guest +: ok=' "$PLAY_LOG" || true)
    CHANGED=$(sed -n 's/.* changed=\([0-9]*\).*/\1/p' <<<"$recap")
    say "playbook '$name': rc $rc, $(($(date +%s) - t0)) s: ${recap#guest*: }"
    return $rc
}
play_ok() {
    play "$@" || {
        tail -n 40 "$PLAY_LOG" >&2
        die "playbook '$1' failed (log: $PLAY_LOG)"
    }
    grep -qE 'failed=0 ' "$PLAY_LOG" || die "playbook '$1' has failed tasks"
}
expect_unchanged() {
    [ "$CHANGED" = 0 ] || {
        grep -E '^changed:' -B2 "$PLAY_LOG" | grep -E '^(TASK|RUNNING HANDLER|changed)' >&2
        die "the run reported changed=$CHANGED, want changed=0"
    }
    say "ok: idempotent (changed=0)"
}
failed_task() { awk '/^(TASK|RUNNING HANDLER) \[/ { t = $0 } /^fatal:/ { print t; exit }' "$PLAY_LOG"; }
handler_ran() { grep -qF "RUNNING HANDLER [chatd : $1]" "$PLAY_LOG"; }
mainpid() { G systemctl show -p MainPID --value chatd; }
http_get() { # URL [curl args]: prints the status code
    local url=$1
    shift
    curl -sS -o "$RUN/body" -w '%{http_code}' --max-time 10 "$@" "$url" || echo "curl-failed"
}
expect_page() { # URL [curl args]
    local code
    code=$(http_get "$@")
    [ "$code" = 200 ] || die "GET $1: $code, want 200"
    grep -qF '<title>chatd' "$RUN/body" || die "GET $1: 200 but not chatd's page"
    say "ok: GET $1 -> 200, chatd's page"
}
# wscheck exits with 3 when a check stalled as a whole (see wscheck.py): tried once more then.
wscheck() {
    local rc=0
    "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?
    [ $rc = 3 ] && { say "wscheck stalled, once more: $*"; rc=0; "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?; }
    [ $rc = 0 ] || die "wscheck $*"
}
# From the client namespace: an outside client, with its own IPv4 or IPv6 address.
C_wscheck() {
    local rc=0
    C "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?
    [ $rc = 3 ] && { say "wscheck stalled, once more: $*"; rc=0; C "$VENV/bin/python" "$HERE/wscheck.py" "$@" || rc=$?; }
    [ $rc = 0 ] || die "wscheck (client namespace) $*"
}
C_page() { # URL [curl args]: GET from the client namespace must give chatd's page
    local code arg via=''
    for arg in "${@:2}"; do [[ $arg == chat.test:* ]] && via=" via ${arg#chat.test:*:}"; done
    code=$(C curl -sS -o "$RUN/body" -w '%{http_code}' --max-time 10 "${@:2}" "$1" || echo curl-failed)
    [ "$code" = 200 ] || die "client namespace: GET $1$via: $code, want 200"
    grep -qF '<title>chatd' "$RUN/body" || die "client namespace: GET $1$via: 200 but not chatd's page"
    say "ok: client namespace: GET $1$via -> 200, chatd's page"
}
C_status() { # URL [curl args]: the status code a GET from the client namespace gets
    C curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "${@:2}" "$1" || echo curl-failed
}
FORGED='X-Forwarded-For: 10.1.2.3'
# The log of the running chatd process only (earlier runs logged other clients).
chatd_log() { G journalctl -u chatd "_PID=$(mainpid)" --no-pager -o cat; }
# chatd logs a client as the first 8 hex digits of its keyed address hash (HMAC-SHA256 under
# SHA-256 of the key file's secret, of 4 + the IPv4 octets or 6 + the IPv6 /64), never the
# address. Every play gives it ADDRESS_KEY, so the harness can compute what it logs.
short_hash() { # ADDR: what chatd logs for a client at ADDR
    "$VENV/bin/python" - "$1" "$ADDRESS_KEY" <<'PY'
import hashlib, hmac, ipaddress, sys
ip = ipaddress.ip_address(sys.argv[1])
if ip.version == 6 and ip.ipv4_mapped:
    ip = ip.ipv4_mapped
group = b"\x04" + ip.packed if ip.version == 4 else b"\x06" + ip.packed[:8]
key = hashlib.sha256(sys.argv[2].strip().encode()).digest()
print(hmac.new(key, group, hashlib.sha256).hexdigest()[:8])
PY
}
chatd_logged() { # MESSAGE ADDR: a line with MESSAGE whose client is exactly ADDR's hash (waits for journald)
    local journal pattern
    pattern="$1.*client: $(short_hash "$2")(,|\$)"
    for _ in $(seq 50); do
        journal=$(chatd_log) && grep -qE "$pattern" <<<"$journal" && return 0
        sleep 0.1
    done
    return 1
}
chatd_never_logged() { # TEXT
    local journal
    journal=$(chatd_log) && ! grep -qF "$1" <<<"$journal"
}
# (Output is captured before grep -q, which would otherwise end the pipe early: SIGPIPE + pipefail.)
nft_drops() {
    local chain
    G systemctl is-active --quiet nftables && chain=$(G nft list chain inet filter input) &&
        grep -q 'policy drop' <<<"$chain"
}
journal_has() {
    local journal
    journal=$(G journalctl -u "$1" --no-pager) && grep -q "$2" <<<"$journal"
}
redirects_to_https() { [[ $1 == 30[18] && ${2,,} == "location: https://chat.test"* ]]; }
# shellcheck disable=SC2016 # dpkg-query expands ${Status}
not_installed() { [[ "$(G dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" != *"ok installed"* ]]; }
listening() { G ss -Hltnp | awk '/"chatd"/ { print $4 }' | sort | tr '\n' ' ' | sed 's/ $//'; }

phase "playbook: deploy"
play_ok deploy
[ "$CHANGED" -gt 0 ] || die "the first run changed nothing"
check "chatd is active" G systemctl is-active --quiet chatd
check "chatd is enabled" G systemctl is-enabled --quiet chatd
# ss shows a [::] socket that also takes IPv4 (IPV6_V6ONLY off) as *:80, a v6-only one as [::]:80.
check "chatd listens on [::]:80, dual-stack, only (got: $(listening))" [ "$(listening)" = "*:80" ]
PID1=$(mainpid)
check "chatd runs as user chatd" [ "$(G ps -o user= -p "$PID1")" = chatd ]
check "/usr/local/bin/chatd is the given binary" cmp -s "$BIN" "$GUEST/usr/local/bin/chatd"
check "the unit is deploy/chatd.service, unchanged" cmp -s "$ROOT/deploy/chatd.service" "$GUEST/etc/systemd/system/chatd.service"
check "logrotate rules are deploy/logrotate" cmp -s "$ROOT/deploy/logrotate" "$GUEST/etc/logrotate.d/chatd"
check "sysctl file is deploy/sysctl.d/60-chatd.conf" cmp -s "$ROOT/deploy/sysctl.d/60-chatd.conf" "$GUEST/etc/sysctl.d/60-chatd.conf"
check "/etc/chatd/chatd.toml is root:chatd 0640" [ "$(G stat -c '%U:%G %a' /etc/chatd/chatd.toml)" = "root:chatd 640" ]
check "the rendered configuration passes chatd -t" G /usr/local/bin/chatd -t --config /etc/chatd/chatd.toml
check "kernel settings applied in the guest (net.core.somaxconn = 8192)" [ "$(G sysctl -n net.core.somaxconn)" = 8192 ]
check "... and not on this machine (fs.file-max is global: still $(cat /proc/sys/fs/file-max))" \
    [ "$(cat /proc/sys/fs/file-max)" != 1048576 ]
check "nftables is active with a drop policy" nft_drops
check "conntrack sized for the connection target (net.netfilter.nf_conntrack_max = 262144)" \
    grep -qx 'net.netfilter.nf_conntrack_max = 262144' "$GUEST/etc/sysctl.d/61-chatd-conntrack.conf"
check "... with nf_conntrack loaded at boot" grep -qx nf_conntrack "$GUEST/etc/modules-load.d/chatd-conntrack.conf"
check "the rollout waited for /healthz and the version" grep -q 'is serving (/healthz 200)' "$PLAY_LOG"
expect_page "http://$ADDR:$HTTP_PORT/"
wscheck pair "ws://$ADDR:$HTTP_PORT/ws" --max-chars 2000
# As an outside client, over IPv4 and IPv6, with a forged X-Forwarded-For that nobody trusts.
C_page "http://$GUEST4/"
C_page "http://[$GUEST6]/"
C_wscheck pair "ws://$GUEST4/ws" --max-chars 2000 --header "$FORGED"
C_wscheck pair "ws://[$GUEST6]/ws" --max-chars 2000 --header "$FORGED"
check "chatd logged the IPv4 client as $CLIENT4" chatd_logged "websocket open" "$CLIENT4"
check "chatd logged the IPv6 client as $CLIENT6" chatd_logged "websocket open" "$CLIENT6"
check "... never as ::ffff:a.b.c.d" chatd_never_logged "::ffff:"
check "... and never by the forged X-Forwarded-For" chatd_never_logged "10.1.2.3"
# A listener the firewall does not know about: reachable inside the guest, dropped from outside.
G systemd-run --quiet --unit=chatd-test-listener python3 -c \
    'import socket, time; s = socket.socket(socket.AF_INET6); s.bind(("::", 9999)); s.listen(); time.sleep(600)'
for _ in $(seq 50); do [ -n "$(G ss -Hltn 'sport = :9999')" ] && break; sleep 0.1; done
check "a test listener on port 9999 in the guest" [ -n "$(G ss -Hltn 'sport = :9999')" ]
expect_port 22 open
expect_port 80 open
expect_port 9999 dropped
G systemctl stop chatd-test-listener

phase "playbook: second run"
play_ok again
expect_unchanged

phase "playbook: reloadable settings (chatd_max_message_chars 2000 -> 100, chatd_trusted_proxies)"
mkdir -p "$RUN/hold"
"$VENV/bin/python" "$HERE/wscheck.py" hold "ws://$ADDR:$HTTP_PORT/ws" "$RUN/hold" \
    --max-chars-before 2000 --max-chars 100 >"$RUN/hold.log" 2>&1 &
HOLD_PID=$!
for _ in $(seq 100); do [ -e "$RUN/hold/paired" ] && break; kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
[ -e "$RUN/hold/paired" ] || { cat "$RUN/hold.log" >&2; die "the held pair did not connect"; }
say "ok: a pair is connected and chatting before the run"
play_ok reload -e chatd_max_message_chars=100 -e "{\"chatd_trusted_proxies\": [\"$CLIENT4\"]}"
[ "$CHANGED" -gt 0 ] || die "changing chatd_max_message_chars changed nothing"
handler_ran "Reload chatd" || die "the Reload chatd handler did not run"
! handler_ran "Restart chatd" || die "a reloadable change ran the Restart chatd handler"
check "same MainPID after the reload ($PID1)" [ "$(mainpid)" = "$PID1" ]
check "systemd ran the reload" journal_has chatd 'Reloaded chatd'
check "chatd.toml has trusted_proxies = [\"$CLIENT4\"]" \
    grep -qxF "trusted_proxies = [\"$CLIENT4\"]" "$GUEST/etc/chatd/chatd.toml"
# The client namespace is now a trusted proxy: chatd judges the client its header names.
C_wscheck pair "ws://$GUEST4/ws" --max-chars 100 --header "$FORGED"
check "the reloaded trusted_proxies applies: chatd logged the forwarded 10.1.2.3" \
    chatd_logged "websocket open" 10.1.2.3
touch "$RUN/hold/go"
wait "$HOLD_PID" || { cat "$RUN/hold.log" >&2; die "the pair connected before the reload"; }
HOLD_PID=''
say "ok: $(tail -n 1 "$RUN/hold.log")"

phase "playbook: invalid value (chatd_max_connections=0) is refused by chatd -t"
sum_before=$(sha256sum "$GUEST/etc/chatd/chatd.toml")
if play bad -e chatd_max_message_chars=100 -e chatd_max_connections=0; then
    die "the playbook accepted max_connections = 0"
fi
grep -q 'max_connections' "$PLAY_LOG" || die "the failure does not name max_connections (log: $PLAY_LOG)"
check "chatd.toml untouched" [ "$(sha256sum "$GUEST/etc/chatd/chatd.toml")" = "$sum_before" ]
check "chatd still running, same MainPID" [ "$(mainpid)" = "$PID1" ]

phase "playbook: restart-only setting (chatd_listen [::]:80 -> [::]:8081)"
LISTEN_8081='{"chatd_listen": "[::]:8081"}'
play_ok listen -e chatd_max_message_chars=100 -e "$LISTEN_8081"
handler_ran "Restart chatd" || die "the Restart chatd handler did not run"
PID2=$(mainpid)
check "new MainPID after the restart ($PID1 -> $PID2)" [ "$PID2" != "$PID1" -a "$PID2" != 0 ]
check "chatd listens on [::]:8081, dual-stack, only (got: $(listening))" [ "$(listening)" = "*:8081" ]
expect_page "http://$ADDR:$ALT_PORT/"
wscheck pair "ws://$ADDR:$ALT_PORT/ws" --max-chars 100
expect_port 8081 open
expect_port 80 dropped

phase "playbook: third run"
play_ok again2 -e chatd_max_message_chars=100 -e "$LISTEN_8081"
expect_unchanged

phase "playbook: a new binary restarts"
cp "$BIN" "$RUN/chatd-new" && printf '\n' >>"$RUN/chatd-new" # same program, different file
play_ok binary -e chatd_max_message_chars=100 -e "$LISTEN_8081" -e "chatd_binary_src=$RUN/chatd-new"
PID3=$(mainpid)
check "new MainPID after the binary changed ($PID2 -> $PID3)" [ "$PID3" != "$PID2" -a "$PID3" != 0 ]
expect_page "http://$ADDR:$ALT_PORT/"

phase "playbook: a binary that does not run on the host is refused, the old one keeps serving"
# A shell script that fails --version, and chatd itself marked as an aarch64 ELF (e_machine 0xb7):
# the kernel refuses to run it (Exec format error), as it would a build for another architecture.
printf '#!/bin/sh\necho "not chatd" >&2\nexit 1\n' >"$RUN/chatd-exits-1"
cp "$RUN/chatd-new" "$RUN/chatd-aarch64"
printf '\xb7\x00' | dd of="$RUN/chatd-aarch64" bs=1 seek=18 conv=notrunc status=none
chmod 0755 "$RUN/chatd-exits-1" "$RUN/chatd-aarch64"
for broken in chatd-exits-1 chatd-aarch64; do
    if play "broken-$broken" -e chatd_max_message_chars=100 -e "$LISTEN_8081" -e "chatd_binary_src=$RUN/$broken"; then
        die "the playbook installed $broken"
    fi
    [[ "$(failed_task)" == "TASK [chatd : Run the staged binary on the host"* ]] ||
        die "$broken: the play failed at '$(failed_task)', not at the staged --version check (log: $PLAY_LOG)"
    check "$broken refused: /usr/local/bin/chatd is still the previous build" cmp -s "$RUN/chatd-new" "$GUEST/usr/local/bin/chatd"
    check "... chatd still running, same MainPID ($PID3)" [ "$(mainpid)" = "$PID3" ]
    expect_page "http://$ADDR:$ALT_PORT/"
done
check "the binary before the last rollout is kept as /usr/local/bin/chatd.previous" \
    cmp -s "$BIN" "$GUEST/usr/local/bin/chatd.previous"

phase "playbook: rollback (-e chatd_rollback=true)"
play_ok rollback -e chatd_max_message_chars=100 -e "$LISTEN_8081" -e chatd_rollback=true
PID4=$(mainpid)
check "restarted on the previous binary ($PID3 -> $PID4)" [ "$PID4" != "$PID3" -a "$PID4" != 0 ]
check "/usr/local/bin/chatd is the previous binary again" cmp -s "$BIN" "$GUEST/usr/local/bin/chatd"
check "... and chatd.previous the one rolled back from" cmp -s "$RUN/chatd-new" "$GUEST/usr/local/bin/chatd.previous"
grep -q 'is serving (/healthz 200)' "$PLAY_LOG" || die "the rollback did not wait for /healthz and the version"
expect_page "http://$ADDR:$ALT_PORT/"

phase "playbook: HTTPS through Caddy (chatd_domain=chat.test, internal CA)"
HTTPS_VARS=(-e chatd_max_message_chars=100 -e chatd_domain=chat.test -e chatd_tls_internal=true
    -e "chatd_binary_src=$RUN/chatd-new")
play_ok https "${HTTPS_VARS[@]}"
check "caddy is active" G systemctl is-active --quiet caddy
check "chatd listens on 127.0.0.1:8080 only (got: $(listening))" [ "$(listening)" = "127.0.0.1:8080" ]
check "allowed_origins has https://chat.test" grep -qF '"https://chat.test"' "$GUEST/etc/chatd/chatd.toml"
check "trusted_proxies is Caddy's 127.0.0.1" grep -qxF 'trusted_proxies = ["127.0.0.1"]' "$GUEST/etc/chatd/chatd.toml"
CA=$GUEST/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt
for _ in $(seq 100); do [ -s "$CA" ] && break; sleep 0.1; done
[ -s "$CA" ] || die "Caddy's internal root CA was not created at ${CA#"$GUEST"}"
cp "$CA" "$RUN/caddy-root.crt"
RESOLVE=(--resolve "chat.test:$HTTPS_PORT:$ADDR" --cacert "$RUN/caddy-root.crt")
expect_page "https://chat.test:$HTTPS_PORT/" "${RESOLVE[@]}"
G curl -fsS -o /dev/null --max-time 10 --resolve chat.test:443:127.0.0.1 \
    --cacert /var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt https://chat.test/ ||
    die "inside the guest: GET https://chat.test/ on port 443"
say "ok: inside the guest: GET https://chat.test/ (port 443, certificate for chat.test) -> 200"
http_get "https://chat.test:$HTTPS_PORT/" "${RESOLVE[@]}" -D "$RUN/headers" >/dev/null
check "Caddy sends HSTS (Strict-Transport-Security: max-age=31536000)" \
    grep -qix 'strict-transport-security: max-age=31536000.' "$RUN/headers"
code=$(http_get "http://chat.test:$HTTP_PORT/" --resolve "chat.test:$HTTP_PORT:$ADDR" -D "$RUN/headers")
location=$(grep -i '^location:' "$RUN/headers" | tr -d '\r' || true)
check "http:// is redirected to https:// ($code, $location)" redirects_to_https "$code" "$location"
URL="wss://chat.test:$HTTPS_PORT/ws"
wscheck pair "$URL" --connect "$ADDR:$HTTPS_PORT" --ca "$RUN/caddy-root.crt" --max-chars 100 \
    --origin "https://chat.test:$HTTPS_PORT"
# The page's origin without the test's port differs from the Host header: allowed only through
# allowed_origins, which the role filled from chatd_domain.
wscheck pair "$URL" --connect "$ADDR:$HTTPS_PORT" --ca "$RUN/caddy-root.crt" --origin https://chat.test
wscheck refused "$URL" --connect "$ADDR:$HTTPS_PORT" --ca "$RUN/caddy-root.crt" --origin https://evil.test
# Outside clients through Caddy, over IPv4 and IPv6, each sending a forged X-Forwarded-For:
# Caddy replaces it, and chatd (trusting Caddy's 127.0.0.1) logs the client's real address.
C_CA=(--cacert "$RUN/caddy-root.crt")
C_page https://chat.test/ --resolve "chat.test:443:$GUEST4" "${C_CA[@]}"
C_page https://chat.test/ --resolve "chat.test:443:[$GUEST6]" "${C_CA[@]}"
C_wscheck pair wss://chat.test/ws --connect "$GUEST4:443" --ca "$RUN/caddy-root.crt" \
    --origin https://chat.test --header "$FORGED"
C_wscheck pair wss://chat.test/ws --connect "[$GUEST6]:443" --ca "$RUN/caddy-root.crt" \
    --origin https://chat.test --header "$FORGED"
check "through Caddy, chatd logged the IPv4 client as $CLIENT4" chatd_logged "websocket open" "$CLIENT4"
check "through Caddy, chatd logged the IPv6 client as $CLIENT6" chatd_logged "websocket open" "$CLIENT6"
check "... and never the forged X-Forwarded-For (Caddy replaced it)" chatd_never_logged "10.1.2.3"
# /metrics is not served through Caddy to anyone, not even to a client Caddy sees as 127.0.0.1
# (the port forward), while scrapers on the host still reach chatd itself.
for path in /metrics /metrics/ /metrics/x /METRICS "/metrics?x=1"; do
    for resolve in "chat.test:443:$GUEST4" "chat.test:443:[$GUEST6]"; do
        code=$(C_status "https://chat.test$path" --resolve "$resolve" "${C_CA[@]}")
        [ "$code" = 404 ] || die "client namespace: GET https://chat.test$path via $resolve: $code, want 404"
    done
    code=$(http_get "https://chat.test:$HTTPS_PORT$path" "${RESOLVE[@]}")
    [ "$code" = 404 ] || die "GET https://chat.test:$HTTPS_PORT$path (Caddy sees 127.0.0.1): $code, want 404"
done
say "ok: /metrics through Caddy is 404 from the client namespace (IPv4, IPv6) and from 127.0.0.1"
check "chatd still serves /metrics on 127.0.0.1:8080 inside the guest" \
    G curl -fsS -o /dev/null --max-time 10 http://127.0.0.1:8080/metrics
expect_port 22 open
expect_port 80 open
expect_port 443 open
expect_port 8080 dropped

phase "playbook: fourth run (with Caddy)"
play_ok again3 "${HTTPS_VARS[@]}"
expect_unchanged

phase "playbook: domain removed again"
play_ok nodomain -e chatd_max_message_chars=100
check "caddy is no longer installed" not_installed caddy
check "chatd listens on [::]:80, dual-stack, only (got: $(listening))" [ "$(listening)" = "*:80" ]
check "trusted_proxies is empty again" grep -qxF 'trusted_proxies = []' "$GUEST/etc/chatd/chatd.toml"
expect_page "http://$ADDR:$HTTP_PORT/"
wscheck pair "ws://$ADDR:$HTTP_PORT/ws" --max-chars 100
expect_port 443 dropped

say "all checks passed"
