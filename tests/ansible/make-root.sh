#!/usr/bin/env bash
# Builds (once) and refreshes the cached Debian 12 root file system that tests/ansible/run.sh
# boots, one copy per run.
#
#   tests/ansible/make-root.sh DIR
#
# 1. If DIR (e.g. /var/cache/chatd-test/debian12-root) does not exist, debootstrap creates it
#    (~2-5 min, ~300 MB): Debian 12 minbase with systemd, dbus, openssh-server and python3. Root
#    logs in by key only (Debian's default `PermitRootLogin prohibit-password`; no password is
#    set; run.sh writes a fresh key into each run's copy). Built in DIR.tmp, then renamed, so an
#    interrupted build is never mistaken for a finished one.
# 2. If the root's local apt repository (/opt/chatd-test-apt) does not hold exactly the packages
#    listed in ROLE_PACKAGES below, they are downloaded from Debian (with their dependencies) into
#    it. The booted guest has its own network namespace with no route out, so its only apt source
#    is that repository: the role's apt tasks run for real, offline. Add a package here when the
#    role starts installing one.
# 3. The same for the roles redis and prometheus (CLUSTER_PACKAGES, for cluster.sh), in a second
#    repository (/opt/chatd-test-apt-cluster) with its own sources file, so that a root whose
#    first repository another checkout rebuilt keeps it, or gets it back here.
set -euo pipefail
DIR=${1:?usage: make-root.sh DIR}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROLE_PACKAGES="caddy logrotate nftables python3-apt"
REPO_IN_GUEST=/opt/chatd-test-apt
CLUSTER_PACKAGES="redis-server prometheus prometheus-redis-exporter"
CLUSTER_REPO_IN_GUEST=/opt/chatd-test-apt-cluster
CLUSTER_LIST=etc/apt/sources.list.d/chatd-test-cluster.list

log() { printf 'make-root: %s\n' "$*" >&2; }
MOUNTED=()
cleanup() {
    local m
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[i]}
        umount -l "$m" 2>/dev/null || true
    done
}
trap cleanup EXIT

# ---- 1. the base system ----------------------------------------------------------------------
if [ ! -x "$DIR/lib/systemd/systemd" ]; then
    TMP=$DIR.tmp
    rm -rf "$TMP"
    mkdir -p "$(dirname "$DIR")"
    log "debootstrap bookworm into $TMP (takes a few minutes)"
    if ! debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,openssh-server,python3,iproute2,procps,curl,ca-certificates,less \
        bookworm "$TMP" "$MIRROR" >"$TMP.log" 2>&1; then
        tail -n 30 "$TMP.log" >&2
        log "debootstrap failed (full log: $TMP.log)"
        exit 1
    fi
    echo chatd-test >"$TMP/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tchatd-test\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$TMP/etc/hosts"
    install -d -m 0700 "$TMP/root/.ssh"
    # No password logins at all: root by key only.
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n' \
        >"$TMP/etc/ssh/sshd_config.d/chatd-test.conf"
    # No consoles in the container.
    chroot "$TMP" systemctl mask -q console-getty.service getty@tty1.service
    : >"$TMP/etc/machine-id"
    rm -f "$TMP.log"
    mv "$TMP" "$DIR"
    log "base system ready: $DIR"
fi

# ---- 2. the local apt repository -------------------------------------------------------------
REPO=$DIR$REPO_IN_GUEST
if [ "$(cat "$REPO/PACKAGES" 2>/dev/null || true)" != "$ROLE_PACKAGES" ]; then
    log "downloading into the local apt repository: $ROLE_PACKAGES"
    rm -f "$REPO/PACKAGES"
    # For this one step the chroot uses the host's network, resolver and Debian's mirror.
    cp /etc/resolv.conf "$DIR/etc/resolv.conf"
    rm -f "$DIR"/etc/apt/sources.list.d/*
    echo "deb $MIRROR bookworm main" >"$DIR/etc/apt/sources.list"
    mount -t proc proc "$DIR/proc" && MOUNTED+=("$DIR/proc")
    rm -rf "$DIR"/var/lib/apt/lists/* "$DIR"/var/cache/apt/archives/*.deb
    chroot "$DIR" apt-get update -qq
    # Download-only against the base system: exactly what a fresh host would have to fetch.
    # shellcheck disable=SC2086
    chroot "$DIR" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --download-only $ROLE_PACKAGES >/dev/null
    umount "$DIR/proc" && MOUNTED=()
    rm -rf "$REPO"
    mkdir -p "$REPO"
    mv "$DIR"/var/cache/apt/archives/*.deb "$REPO/"
    (cd "$REPO" && apt-ftparchive packages . >Packages && apt-ftparchive release . >Release)
    rm -f "$DIR/etc/apt/sources.list"
    echo "deb [trusted=yes] file:$REPO_IN_GUEST ./" >"$DIR/etc/apt/sources.list.d/chatd-test.list"
    rm -rf "$DIR"/var/lib/apt/lists/*
    : >"$DIR/etc/resolv.conf"
    # Lists as a fresh cloud image would have them: present (the role still runs apt update).
    chroot "$DIR" apt-get update -qq
    for p in $ROLE_PACKAGES; do
        chroot "$DIR" apt-cache show "$p" >/dev/null
    done
    echo "$ROLE_PACKAGES" >"$REPO/PACKAGES"
    log "local apt repository ready ($(find "$REPO" -name '*.deb' | wc -l) packages)"
fi

# ---- 3. the cluster roles' repository ---------------------------------------------------------
CREPO=$DIR$CLUSTER_REPO_IN_GUEST
if [ "$(cat "$CREPO/PACKAGES" 2>/dev/null || true)" != "$CLUSTER_PACKAGES" ]; then
    log "downloading into the cluster apt repository: $CLUSTER_PACKAGES"
    rm -rf "$CREPO"
    cp /etc/resolv.conf "$DIR/etc/resolv.conf"
    SAVED=$(mktemp -d)
    cp -a "$DIR/etc/apt/sources.list.d/." "$SAVED/"
    rm -f "$DIR"/etc/apt/sources.list.d/*
    echo "deb $MIRROR bookworm main" >"$DIR/etc/apt/sources.list"
    mount -t proc proc "$DIR/proc" && MOUNTED+=("$DIR/proc")
    rm -rf "$DIR"/var/lib/apt/lists/* "$DIR"/var/cache/apt/archives/*.deb
    chroot "$DIR" apt-get update -qq
    # shellcheck disable=SC2086
    chroot "$DIR" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --download-only --no-install-recommends $CLUSTER_PACKAGES >/dev/null
    umount "$DIR/proc" && MOUNTED=()
    mkdir -p "$CREPO"
    mv "$DIR"/var/cache/apt/archives/*.deb "$CREPO/"
    (cd "$CREPO" && apt-ftparchive packages . >Packages && apt-ftparchive release . >Release)
    rm -f "$DIR/etc/apt/sources.list"
    cp -a "$SAVED/." "$DIR/etc/apt/sources.list.d/"
    rm -rf "$SAVED" "$DIR/$CLUSTER_LIST"
    : >"$DIR/etc/resolv.conf"
    echo "$CLUSTER_PACKAGES" >"$CREPO/PACKAGES"
    log "cluster apt repository ready ($(find "$CREPO" -name '*.deb' | wc -l) packages)"
fi
if [ ! -f "$DIR/$CLUSTER_LIST" ]; then
    echo "deb [trusted=yes] file:$CLUSTER_REPO_IN_GUEST ./" >"$DIR/$CLUSTER_LIST"
    rm -rf "$DIR"/var/lib/apt/lists/*
    chroot "$DIR" apt-get update -qq
    for p in $CLUSTER_PACKAGES; do
        chroot "$DIR" apt-cache show "$p" >/dev/null
    done
fi
