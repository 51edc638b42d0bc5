#!/usr/bin/env bash
# Boots a Debian root file system with its own systemd as PID 1, in new PID, mount, UTS, IPC,
# cgroup and network namespaces - a small container without a container manager (systemd-nspawn
# needs a host systemd with D-Bus, which this machine does not run).
#
#   tests/ansible/boot-guest.sh ROOT CGROUP
#
# Runs in the foreground until the guest powers off (`systemctl poweroff` inside it) or is
# killed; the caller starts it in the background and finds the guest's PID 1 as the child of
# this process (this script execs unshare, which forks it). CGROUP is a name for the child
# cgroup created in the host's `name=systemd` (v1) and `unified` (v2) hierarchies; the caller
# removes it after the guest has stopped.
#
# What the guest can and cannot touch on the host:
# - its own network namespace: only `lo` until the caller adds links; nothing it does to
#   addresses, routes or nftables reaches the host;
# - /proc/sys is writable only below /proc/sys/net (per network namespace, so the guest's own);
#   every other /proc/sys directory and /proc/sysrq-trigger are read-only (writes fail with
#   EROFS, which systemd-sysctl ignores, as in other containers); /sys is read-only;
# - /dev holds only null, zero, full, random, urandom, tty and a private devpts;
# - its systemd sees only its own cgroup subtree.
set -euo pipefail
R=${1:?usage: boot-guest.sh ROOT CGROUP}
CG=${2:?usage: boot-guest.sh ROOT CGROUP}
R=$(realpath "$R")
[ -x "$R/lib/systemd/systemd" ] || { echo "boot-guest: no systemd in $R" >&2; exit 1; }

# The host's cgroup hierarchies (cgroup v1 + v2 "hybrid" here; a pure v2 host has no name=systemd).
V1=/sys/fs/cgroup/systemd
V2=/sys/fs/cgroup/unified
[ -f /sys/fs/cgroup/cgroup.controllers ] && V2=/sys/fs/cgroup V1=
for h in $V1 $V2; do
    mkdir -p "$h/$CG"
    echo $$ >"$h/$CG/cgroup.procs"
done

export R V1
# shellcheck disable=SC2016 # expanded by the inner bash
exec unshare --pid --fork --mount --uts --ipc --cgroup --net --propagation private \
    bash -euo pipefail -c '
    # From here on we are PID 1 of the new PID namespace (until exec systemd, still PID 1).
    mount --bind "$R" "$R"
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
    for d in "$R"/proc/sys/*; do
        [ "${d##*/}" = net ] && continue
        mount --bind "$d" "$d"
        mount -o remount,bind,ro "$d"
    done
    if [ -e "$R/proc/sysrq-trigger" ]; then
        mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
        mount -o remount,bind,ro "$R/proc/sysrq-trigger"
    fi
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
    mount -t tmpfs -o nosuid,nodev,noexec,mode=755 tmpfs "$R/sys/fs/cgroup"
    if [ -n "$V1" ]; then
        mkdir "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
        mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup/systemd"
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"
    else
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
    fi
    mount -t tmpfs -o nosuid,mode=755,size=16m tmpfs "$R/dev"
    for n in null zero full random urandom tty; do
        touch "$R/dev/$n"
        mount --bind "/dev/$n" "$R/dev/$n"
    done
    mkdir -p "$R/dev/pts" "$R/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
    ln -s pts/ptmx "$R/dev/ptmx"
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$R/dev/shm"
    ln -s /proc/self/fd "$R/dev/fd"
    ln -s /proc/self/fd/0 "$R/dev/stdin"
    ln -s /proc/self/fd/1 "$R/dev/stdout"
    ln -s /proc/self/fd/2 "$R/dev/stderr"
    mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs "$R/run"
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$R/tmp"
    hostname chatd-test
    exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$R" /lib/systemd/systemd --system
'
