# chatd on Hetzner Cloud: server_count Debian servers behind a firewall, then the playbook.
# One server keeps a stable address (primary IPs); more form one crowd: a private network, a
# Redis server on it, and a load balancer in front that checks /healthz (and, with a domain, holds
# a managed certificate).
#
# Everything that is not a Hetzner resource lives in provider-free modules (modules/), which the AWS
# root (aws/) uses too and which tests/terraform/run.sh tests with `terraform test`:
#   cluster         the deployment's shape: names, private addresses, what the inventory adds
#   cloud_init      first-boot user data (root's SSH key, python3, security updates)
#   firewall_rules  22 from admin_cidrs, the web ports (one server) and ICMP from anywhere, as data
#   deploy          the Ansible inventory, the URLs, and the ansible-playbook run

locals {
  repo_dir     = abspath("${path.module}/..")
  playbook     = var.ansible_playbook != "" ? abspath(pathexpand(var.ansible_playbook)) : "${local.repo_dir}/ansible/site.yml"
  playbook_dir = dirname(local.playbook)
  chatd_binary = var.chatd_binary != "" ? abspath(pathexpand(var.chatd_binary)) : "${local.repo_dir}/target/release/chatd"

  # A key already in the project (ssh_key_name), or the one in ssh_public_key_file, uploaded.
  ssh_public_key = var.ssh_key_name != "" ? one(data.hcloud_ssh_key.existing[*].public_key) : try(trimspace(file(pathexpand(var.ssh_public_key_file))), "")
  # Ansible logs in with the private half: ssh_private_key_file, else the public key file's name
  # without .pub (with ssh_key_name and no file: ssh's defaults and agent).
  ssh_private_key_file = (
    var.ssh_private_key_file != "" ? abspath(pathexpand(var.ssh_private_key_file)) :
    var.ssh_key_name == "" ? abspath(trimsuffix(pathexpand(var.ssh_public_key_file), ".pub")) : ""
  )
  ssh_key_id   = var.ssh_key_name != "" ? one(data.hcloud_ssh_key.existing[*].id) : one(hcloud_ssh_key.admin[*].id)
  server_names = toset(module.cluster.server_names)
  labels       = merge(var.labels, { app = "chatd", deployment = var.name })
  cluster      = module.cluster.cluster
  # Hetzner's network zone of each location.
  network_zone = lookup({ fsn1 = "eu-central", nbg1 = "eu-central", hel1 = "eu-central", ash = "us-east", hil = "us-west", sin = "ap-southeast" }, var.location)

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

module "cluster" {
  source = "./modules/cluster"

  name           = var.name
  server_count   = var.server_count
  private_cidr   = cidrsubnet(var.private_network_cidr, 24 - tonumber(split("/", var.private_network_cidr)[1]), 1)
  domain         = var.domain
  chatd_settings = local.chatd_settings
  monitoring     = var.monitoring
}

module "firewall_rules" {
  source = "./modules/firewall_rules"

  admin_cidrs = var.admin_cidrs
  # One server: 80 and 443 from anywhere. A cluster: none; the load balancer reaches chatd over
  # the private network, which Hetzner's firewalls do not filter.
  public_tcp_ports = module.cluster.public_tcp_ports
}

# The Redis server: SSH from the admin networks and ICMP only. Redis itself listens on the private
# network, where the role redis' host firewall admits the chatd servers alone.
module "redis_firewall_rules" {
  source = "./modules/firewall_rules"

  admin_cidrs      = var.admin_cidrs
  public_tcp_ports = []
}

data "hcloud_ssh_key" "existing" {
  count = var.ssh_key_name != "" ? 1 : 0

  name = var.ssh_key_name
}

resource "hcloud_ssh_key" "admin" {
  count = var.ssh_key_name == "" ? 1 : 0

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

resource "hcloud_firewall" "redis" {
  count = local.cluster ? 1 : 0

  name   = "${var.name}-redis"
  labels = local.labels

  dynamic "rule" {
    for_each = module.redis_firewall_rules.ingress_rules
    content {
      description = rule.value.description
      direction   = "in"
      protocol    = rule.value.protocol
      port        = rule.value.port == null ? null : tostring(rule.value.port)
      source_ips  = rule.value.cidrs
    }
  }
}

# --- The private network (cluster) ------------------------------------------------------------------

resource "hcloud_network" "private" {
  count = local.cluster ? 1 : 0

  name     = var.name
  ip_range = var.private_network_cidr
  labels   = local.labels
}

resource "hcloud_network_subnet" "private" {
  count = local.cluster ? 1 : 0

  network_id   = hcloud_network.private[0].id
  type         = "cloud"
  network_zone = local.network_zone
  ip_range     = cidrsubnet(var.private_network_cidr, 24 - tonumber(split("/", var.private_network_cidr)[1]), 1)
}

# --- chatd servers ------------------------------------------------------------------------------------

module "cloud_init" {
  source   = "./modules/cloud_init"
  for_each = local.server_names

  hostname            = each.key
  ssh_authorized_keys = [local.ssh_public_key]
  unattended_upgrades = var.unattended_upgrades
}

# Addresses of their own, kept when a server is replaced (auto_delete off): DNS records and the
# admins' known_hosts stay right.
resource "hcloud_primary_ip" "ipv4" {
  for_each = local.server_names

  name          = "${each.key}-ipv4"
  type          = "ipv4"
  location      = var.location
  assignee_type = "server"
  auto_delete   = false
  labels        = local.labels
}

resource "hcloud_primary_ip" "ipv6" {
  for_each = local.server_names

  name          = "${each.key}-ipv6"
  type          = "ipv6"
  location      = var.location
  assignee_type = "server"
  auto_delete   = false
  labels        = local.labels
}

resource "hcloud_server" "chatd" {
  for_each = local.server_names

  name         = each.key
  server_type  = var.server_type
  image        = var.image
  location     = var.location
  ssh_keys     = [local.ssh_key_id]
  firewall_ids = [hcloud_firewall.chatd.id]
  user_data    = module.cloud_init[each.key].user_data
  backups      = var.backups
  labels       = local.labels

  public_net {
    ipv4_enabled = true
    ipv4         = hcloud_primary_ip.ipv4[each.key].id
    ipv6_enabled = true
    ipv6         = hcloud_primary_ip.ipv6[each.key].id
  }

  dynamic "network" {
    for_each = local.cluster ? [module.cluster.chatd_private_ips[each.key]] : []
    content {
      network_id = hcloud_network.private[0].id
      ip         = network.value
    }
  }

  lifecycle {
    # First-boot settings only matter when a server is created; changing them later must not
    # replace a running server (chatd's own settings go through Ansible, not through these).
    ignore_changes = [user_data, ssh_keys, image]

    precondition {
      condition     = local.ssh_public_key != ""
      error_message = "No SSH public key: set ssh_key_name to a key already in the project, or ssh_public_key_file to a readable .pub file."
    }
  }

  depends_on = [hcloud_network_subnet.private]
}

# --- Redis (cluster) -------------------------------------------------------------------------------

module "redis_cloud_init" {
  source = "./modules/cloud_init"
  count  = local.cluster ? 1 : 0

  hostname            = module.cluster.redis_name
  ssh_authorized_keys = [local.ssh_public_key]
  unattended_upgrades = var.unattended_upgrades
}

resource "hcloud_server" "redis" {
  count = local.cluster ? 1 : 0

  name         = module.cluster.redis_name
  server_type  = var.redis_server_type
  image        = var.image
  location     = var.location
  ssh_keys     = [local.ssh_key_id]
  firewall_ids = [hcloud_firewall.redis[0].id]
  user_data    = module.redis_cloud_init[0].user_data
  labels       = merge(local.labels, { role = "redis" })

  public_net {
    ipv4_enabled = true
    ipv6_enabled = true
  }

  network {
    network_id = hcloud_network.private[0].id
    ip         = module.cluster.redis_private_ip
  }

  lifecycle {
    ignore_changes = [user_data, ssh_keys, image]
  }

  depends_on = [hcloud_network_subnet.private]
}

# --- The load balancer (cluster) ----------------------------------------------------------------------

resource "hcloud_load_balancer" "chatd" {
  count = local.cluster ? 1 : 0

  name               = var.name
  load_balancer_type = var.load_balancer_type
  location           = var.location
  labels             = local.labels

  algorithm {
    type = "least_connections"
  }
}

resource "hcloud_load_balancer_network" "chatd" {
  count = local.cluster ? 1 : 0

  load_balancer_id = hcloud_load_balancer.chatd[0].id
  subnet_id        = hcloud_network_subnet.private[0].id
  ip               = module.cluster.lb_private_ip
}

# Every chatd server, reached on its private address.
resource "hcloud_load_balancer_target" "chatd" {
  for_each = local.cluster ? local.server_names : toset([])

  type             = "server"
  load_balancer_id = hcloud_load_balancer.chatd[0].id
  server_id        = hcloud_server.chatd[each.key].id
  use_private_ip   = true

  depends_on = [hcloud_load_balancer_network.chatd]
}

# Let's Encrypt through Hetzner: the domain's zone must be in Hetzner DNS.
resource "hcloud_managed_certificate" "chatd" {
  count = local.cluster && var.domain != "" ? 1 : 0

  name         = var.domain
  domain_names = [var.domain]
  labels       = local.labels
}

# HTTP(S) to chatd's port 80: the load balancer adds X-Forwarded-For (chatd trusts its private
# address) and passes WebSocket upgrades through; a server whose /healthz is not 200 (stopping,
# or its Redis link down) gets no new connections.
resource "hcloud_load_balancer_service" "chatd" {
  count = local.cluster ? 1 : 0

  load_balancer_id = hcloud_load_balancer.chatd[0].id
  protocol         = var.domain != "" ? "https" : "http"
  listen_port      = var.domain != "" ? 443 : 80
  destination_port = 80

  http {
    certificates    = hcloud_managed_certificate.chatd[*].id
    redirect_http   = var.domain != ""
    sticky_sessions = false
  }

  health_check {
    protocol = "http"
    port     = 80
    interval = 10
    timeout  = 5
    retries  = 2

    http {
      path         = "/healthz"
      status_codes = ["200"]
    }
  }
}

module "deploy" {
  source = "./modules/deploy"

  servers = {
    for name, s in hcloud_server.chatd : name => { id = s.id, ipv4 = s.ipv4_address, ipv6 = s.ipv6_address }
  }
  private_addresses = module.cluster.chatd_private_ips
  redis_servers = {
    for s in hcloud_server.redis : s.name => { id = s.id, ipv4 = s.ipv4_address, private_ip = module.cluster.redis_private_ip }
  }
  prometheus_hosts     = module.cluster.prometheus_hosts
  load_balancer        = one([for lb in hcloud_load_balancer.chatd : { host = lb.ipv4, ipv6 = lb.ipv6 }])
  domain               = var.domain
  tls_on_hosts         = !local.cluster
  chatd_settings       = module.cluster.chatd_settings
  ssh_private_key_file = local.ssh_private_key_file
  run_ansible          = var.run_ansible
  playbook             = local.playbook
  ansible_extra_args   = var.ansible_extra_args
  work_dir             = abspath("${path.module}/.chatd")
  trigger_files        = local.trigger_files
  required_files       = [local.chatd_binary]

  # The servers are on the private network before the playbook wires Redis.
  depends_on = [hcloud_load_balancer_network.chatd]
}
