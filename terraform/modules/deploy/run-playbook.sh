#!/usr/bin/env bash
# Runs the chatd playbook for terraform/modules/deploy. Its terraform_data.playbook calls this
# (local-exec) whenever the inventory, a chatd setting, a server or a watched file changed:
#
#   1. writes the inventory to $CHATD_WORK_DIR/inventory.ini (kept: Ansible can be re-run by hand);
#   2. forgets the SSH host key of every address whose server is not the one seen last time (a
#      replaced server may come back on the same address with a new key). Keys are kept in
#      $CHATD_WORK_DIR/known_hosts: trusted on first contact, a changed key is refused;
#   3. runs ansible-playbook -i inventory.ini [wait.yml] site.yml from the playbook's folder, so that
#      an ansible.cfg beside the playbook applies.
#
# Input, all from the environment (set by main.tf): CHATD_INVENTORY, CHATD_WORK_DIR, CHATD_PLAYBOOK,
# CHATD_ANSIBLE_PLAYBOOK, and optional CHATD_WAIT_PLAYBOOK, CHATD_HOST_IDS ("address id" lines),
# CHATD_ANSIBLE_EXTRA_ARGS (one argument a line).
set -euo pipefail

die() {
    printf 'chatd deploy: %s\n' "$*" >&2
    exit 1
}

: "${CHATD_INVENTORY:?}" "${CHATD_WORK_DIR:?}" "${CHATD_PLAYBOOK:?}" "${CHATD_ANSIBLE_PLAYBOOK:?}"
command -v "$CHATD_ANSIBLE_PLAYBOOK" >/dev/null ||
    die "$CHATD_ANSIBLE_PLAYBOOK not found: install Ansible (pip install ansible-core) or set run_ansible = false"
command -v ssh-keygen >/dev/null || die "ssh-keygen not found: install an OpenSSH client"
[ -f "$CHATD_PLAYBOOK" ] || die "no playbook at $CHATD_PLAYBOOK"

work=$CHATD_WORK_DIR
inventory=$work/inventory.ini
known_hosts=$work/known_hosts
seen=$work/servers # "address id" of the servers whose keys known_hosts may hold
mkdir -p "$work"
chmod 0700 "$work"

printf '%s' "$CHATD_INVENTORY" > "$inventory.new"
mv -f "$inventory.new" "$inventory"

touch "$known_hosts" "$seen"
while read -r address id; do
    [ -n "$address" ] || continue
    if ! grep -qxF -- "$address $id" "$seen"; then
        ssh-keygen -R "$address" -f "$known_hosts" >/dev/null
    fi
done <<< "${CHATD_HOST_IDS:-}"
printf '%s\n' "${CHATD_HOST_IDS:-}" > "$seen"
rm -f "$known_hosts.old"

# Host key checking stays on: accept-new records a new host's key and refuses a changed one.
export ANSIBLE_SSH_COMMON_ARGS="-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=$known_hosts"

playbooks=()
[ -z "${CHATD_WAIT_PLAYBOOK:-}" ] || playbooks+=("$CHATD_WAIT_PLAYBOOK")
playbooks+=("$CHATD_PLAYBOOK")
extra=()
[ -z "${CHATD_ANSIBLE_EXTRA_ARGS:-}" ] || mapfile -t extra <<< "$CHATD_ANSIBLE_EXTRA_ARGS"

cd "$(dirname "$CHATD_PLAYBOOK")"
printf 'chatd deploy: %s -i %s %s\n' "$CHATD_ANSIBLE_PLAYBOOK" "$inventory" "${extra[*]} ${playbooks[*]}"
exec "$CHATD_ANSIBLE_PLAYBOOK" -i "$inventory" "${extra[@]}" "${playbooks[@]}"
