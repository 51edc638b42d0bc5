# chatd on Hetzner Cloud: one firewall, one SSH key, server_count Debian servers, then the playbook.
#
# Everything that is not a Hetzner resource lives in provider-free modules (modules/), which the AWS
# root (aws/) uses too and which tests/terraform/run.sh tests with `terraform test`:
#   cloud_init      first-boot user data (root's SSH key, python3, security updates)
#   firewall_rules  22 from admin_cidrs, 80 and 443 (and ICMP) from anywhere, as data
#   deploy          the Ansible inventory, the URLs, and the ansible-playbook run

locals {
  repo_dir     = abspath("${path.module}/..")
  playbook     = var.ansible_playbook != "" ? abspath(pathexpand(var.ansible_playbook)) : "${local.repo_dir}/ansible/site.yml"
  playbook_dir = dirname(local.playbook)
  chatd_binary = var.chatd_binary != "" ? abspath(pathexpand(var.chatd_binary)) : "${local.repo_dir}/target/release/chatd"

  ssh_public_key = trimspace(file(pathexpand(var.ssh_public_key_file)))
  server_names   = toset([for i in range(var.server_count) : "${var.name}-${i + 1}"])
  labels         = merge(var.labels, { app = "chatd", deployment = var.name })

  # The role installs the binary Terraform watches. SSH is limited to admin_cidrs by the cloud
  # firewall, which the API can change from anywhere; the role's host firewall leaves SSH open
  # unless chatd_settings sets chatd_firewall_ssh_sources (an address list kept on the host could
  # lock out an operator whose address changed).
  chatd_settings = merge({ chatd_binary_src = local.chatd_binary }, var.chatd_settings)

  # A change to any of these files runs the playbook again on the next apply.
  trigger_files = concat(
    [for f in setunion(fileset(local.playbook_dir, "*.{yml,yaml,cfg}"), fileset(local.playbook_dir, "roles/**")) : "${local.playbook_dir}/${f}"],
    [for f in fileset("${local.repo_dir}/deploy", "**") : "${local.repo_dir}/deploy/${f}"],
    [local.chatd_binary],
  )
}

module "cloud_init" {
  source   = "./modules/cloud_init"
  for_each = local.server_names

  hostname            = each.key
  ssh_authorized_keys = [local.ssh_public_key]
  unattended_upgrades = var.unattended_upgrades
}

module "firewall_rules" {
  source = "./modules/firewall_rules"

  admin_cidrs = var.admin_cidrs
}

resource "hcloud_ssh_key" "admin" {
  name       = "${var.name}-admin"
  public_key = local.ssh_public_key
  labels     = local.labels
}

resource "hcloud_firewall" "chatd" {
  name   = var.name
  labels = local.labels

  dynamic "rule" {
    for_each = module.firewall_rules.ingress_rules
    content {
      description = rule.value.description
      direction   = "in"
      protocol    = rule.value.protocol
      port        = rule.value.port == null ? null : tostring(rule.value.port)
      source_ips  = rule.value.cidrs
    }
  }
}

resource "hcloud_server" "chatd" {
  for_each = local.server_names

  name         = each.key
  server_type  = var.server_type
  image        = var.image
  location     = var.location
  ssh_keys     = [hcloud_ssh_key.admin.id]
  firewall_ids = [hcloud_firewall.chatd.id]
  user_data    = module.cloud_init[each.key].user_data
  backups      = var.backups
  labels       = local.labels

  public_net {
    ipv4_enabled = true
    ipv6_enabled = true
  }

  lifecycle {
    # First-boot settings only matter when a server is created; changing them later must not
    # replace a running server (chatd's own settings go through Ansible, not through these).
    ignore_changes = [user_data, ssh_keys, image]
  }
}

module "deploy" {
  source = "./modules/deploy"

  servers = {
    for name, s in hcloud_server.chatd : name => { id = s.id, ipv4 = s.ipv4_address, ipv6 = s.ipv6_address }
  }
  domain             = var.domain
  chatd_settings     = local.chatd_settings
  run_ansible        = var.run_ansible
  playbook           = local.playbook
  ansible_extra_args = var.ansible_extra_args
  work_dir           = abspath("${path.module}/.chatd")
  trigger_files      = local.trigger_files
  required_files     = [local.chatd_binary]
}
