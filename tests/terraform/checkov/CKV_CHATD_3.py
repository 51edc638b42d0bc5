"""CKV_CHATD_3: no Hetzner Cloud firewall rule opens SSH (TCP port 22) to the whole internet.

checkov has no Hetzner checks; tests/terraform/run.sh loads this folder with
--external-checks-dir. Written in Python, not as a YAML graph check, because the condition is about
one rule at a time: the rule's port covers 22 AND its sources hold 0.0.0.0/0 or ::/0. A YAML
check matches `rule.*.port` and `rule.*.source_ips` independently (any rule's port, any rule's
sources), which let a firewall whose second rule opens 22 to the world pass.

A rule counts as opening SSH when its direction is "in" (the default), its protocol is tcp, its
port is 22, "any", or a range "A-B" holding 22, and a source is a whole address space (0.0.0.0/0,
::/0, or any other spelling of them). Values Terraform computes (a dynamic block filled from a
module's output) are not known to checkov and are not judged here: modules/firewall_rules, which
computes them, refuses SSH from everywhere itself and has tests for it.
"""

import ipaddress

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

SSH_PORT = 22


def one(value):
    """checkov wraps every attribute value in a list; unwrap one level."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def covers_ssh(port) -> bool:
    port = str(one(port)).strip().lower()
    if port == "any":
        return True
    if "-" in port:
        low, _, high = port.partition("-")
        if low.isdigit() and high.isdigit():
            return int(low) <= SSH_PORT <= int(high)
        return False
    return port.isdigit() and int(port) == SSH_PORT


def is_world(cidr) -> bool:
    try:
        return ipaddress.ip_network(str(cidr).strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def opens_ssh_to_world(rule: dict) -> bool:
    direction = str(one(rule.get("direction", ["in"]))).lower()
    protocol = str(one(rule.get("protocol", [""]))).lower()
    if direction != "in" or protocol != "tcp" or "port" not in rule:
        return False
    sources = one(rule.get("source_ips", [[]]))
    if isinstance(sources, str):
        sources = [sources]
    return covers_ssh(rule["port"]) and any(is_world(s) for s in sources or [])


class HcloudFirewallNoSshFromWorld(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Ensure no Hetzner Cloud firewall rule opens port 22 to 0.0.0.0/0 or ::/0",
            id="CKV_CHATD_3",
            categories=(CheckCategories.NETWORKING,),
            supported_resources=("hcloud_firewall",),
        )

    def scan_resource_conf(self, conf):
        for rule in conf.get("rule") or []:
            if isinstance(rule, dict) and opens_ssh_to_world(rule):
                return CheckResult.FAILED
        return CheckResult.PASSED


check = HcloudFirewallNoSshFromWorld()
