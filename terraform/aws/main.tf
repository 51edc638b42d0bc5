# chatd on AWS: a small VPC of its own (one public subnet, IPv4 and IPv6), a security group built
# from the shared firewall rules, server_count Debian instances with an Elastic IP each, then the
# playbook. The provider-free modules are the Hetzner root's (../modules), so the firewall policy,
# first-boot configuration, inventory and playbook run are the same on both clouds.

locals {
  repo_dir     = abspath("${path.module}/../..")
  playbook     = var.ansible_playbook != "" ? abspath(pathexpand(var.ansible_playbook)) : "${local.repo_dir}/ansible/site.yml"
  playbook_dir = dirname(local.playbook)
  chatd_binary = var.chatd_binary != "" ? abspath(pathexpand(var.chatd_binary)) : "${local.repo_dir}/target/release/chatd"

  ssh_public_key = trimspace(file(pathexpand(var.ssh_public_key_file)))
  server_names   = toset([for i in range(var.server_count) : "${var.name}-${i + 1}"])
  tags           = merge(var.tags, { app = "chatd", deployment = var.name })

  # The role installs the binary Terraform watches. SSH is limited to admin_cidrs by the cloud
  # firewall, which the API can change from anywhere; the role's host firewall leaves SSH open
  # unless chatd_settings sets chatd_firewall_ssh_sources (an address list kept on the host could
  # lock out an operator whose address changed).
  chatd_settings = merge({ chatd_binary_src = local.chatd_binary }, var.chatd_settings)

  trigger_files = concat(
    [for f in setunion(fileset(local.playbook_dir, "*.{yml,yaml,cfg}"), fileset(local.playbook_dir, "roles/**")) : "${local.playbook_dir}/${f}"],
    [for f in fileset("${local.repo_dir}/deploy", "**") : "${local.repo_dir}/deploy/${f}"],
    [local.chatd_binary],
  )

  # Outbound: apt (Debian mirrors, security updates) and ACME/OCSP for Caddy need HTTP and HTTPS.
  # DNS and NTP go to the VPC resolver and the Amazon Time Sync link-local address, which
  # security groups do not filter.
  egress = merge([for port in [80, 443] : {
    "tcp-${port} 0.0.0.0/0" = { port = port, cidr_ipv4 = "0.0.0.0/0", cidr_ipv6 = null }
    "tcp-${port} ::/0"      = { port = port, cidr_ipv4 = null, cidr_ipv6 = "::/0" }
  }]...)
}

module "cloud_init" {
  source   = "../modules/cloud_init"
  for_each = local.server_names

  hostname            = each.key
  ssh_authorized_keys = [local.ssh_public_key]
  unattended_upgrades = var.unattended_upgrades
}

module "firewall_rules" {
  source = "../modules/firewall_rules"

  admin_cidrs = var.admin_cidrs
}

data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"] # Debian's own account (wiki.debian.org/Cloud/AmazonEC2Image)

  filter {
    name   = "name"
    values = ["debian-${var.debian_release}-${var.architecture == "arm64" ? "arm64" : "amd64"}-*"]
  }

  filter {
    name   = "architecture"
    values = [var.architecture]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

# --- Network ------------------------------------------------------------------------------------

resource "aws_vpc" "chatd" {
  #checkov:skip=CKV2_AWS_11:Flow logs would record who talks to the chat, metadata chatd deliberately does not log; an operator who wants them adds a flow log to this VPC.
  cidr_block                       = var.vpc_cidr
  assign_generated_ipv6_cidr_block = true
  enable_dns_support               = true
  enable_dns_hostnames             = true

  tags = { Name = var.name }
}

# The VPC's default security group, emptied: nothing may use it by accident.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.chatd.id

  tags = { Name = "${var.name}-default-unused" }
}

resource "aws_internet_gateway" "chatd" {
  vpc_id = aws_vpc.chatd.id

  tags = { Name = var.name }
}

resource "aws_subnet" "public" {
  vpc_id                          = aws_vpc.chatd.id
  availability_zone               = var.availability_zone != "" ? var.availability_zone : "${var.region}a"
  cidr_block                      = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), 0)
  ipv6_cidr_block                 = cidrsubnet(aws_vpc.chatd.ipv6_cidr_block, 8, 0)
  assign_ipv6_address_on_creation = true
  # Public IPv4 comes from the Elastic IPs below, never from the subnet.
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.chatd.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.chatd.id
  }

  route {
    ipv6_cidr_block = "::/0"
    gateway_id      = aws_internet_gateway.chatd.id
  }

  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

# --- Firewall -----------------------------------------------------------------------------------

resource "aws_security_group" "chatd" {
  name        = var.name
  description = "chatd: SSH from the admin networks, HTTP and HTTPS from anywhere"
  vpc_id      = aws_vpc.chatd.id

  tags = { Name = var.name }
}

resource "aws_vpc_security_group_ingress_rule" "chatd" {
  for_each = module.firewall_rules.ingress_by_cidr

  security_group_id = aws_security_group.chatd.id
  description       = each.value.description
  ip_protocol       = each.value.protocol == "icmp" ? (each.value.ipv6 ? "icmpv6" : "icmp") : each.value.protocol
  # For ICMP the ports are the ICMP type and code: -1 is all of them.
  from_port = each.value.port == null ? -1 : each.value.port
  to_port   = each.value.port == null ? -1 : each.value.port
  cidr_ipv4 = each.value.ipv6 ? null : each.value.cidr
  cidr_ipv6 = each.value.ipv6 ? each.value.cidr : null

  tags = { Name = "${var.name} ${each.key}" }
}

resource "aws_vpc_security_group_egress_rule" "chatd" {
  for_each = local.egress

  security_group_id = aws_security_group.chatd.id
  description       = "HTTP(S) out: Debian packages, certificates"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr_ipv4
  cidr_ipv6         = each.value.cidr_ipv6

  tags = { Name = "${var.name} out ${each.key}" }
}

# --- Servers ------------------------------------------------------------------------------------

resource "aws_key_pair" "admin" {
  key_name   = "${var.name}-admin"
  public_key = local.ssh_public_key
}

# Each server boots on an interface that already has its Elastic IP, so first boot (apt, cloud-init)
# has internet access; the address survives the instance being replaced.
resource "aws_network_interface" "chatd" {
  for_each = local.server_names

  subnet_id          = aws_subnet.public.id
  security_groups    = [aws_security_group.chatd.id]
  ipv6_address_count = 1

  tags = { Name = each.key }
}

resource "aws_eip" "chatd" {
  for_each = local.server_names

  domain            = "vpc"
  network_interface = aws_network_interface.chatd[each.key].id

  tags = { Name = each.key }

  depends_on = [aws_internet_gateway.chatd]
}

resource "aws_instance" "chatd" {
  for_each = local.server_names

  #checkov:skip=CKV2_AWS_41:chatd calls no AWS API; an instance profile would only put credentials on an internet-facing host.
  ami           = data.aws_ami.debian.id
  instance_type = var.instance_type
  key_name      = aws_key_pair.admin.key_name
  user_data     = module.cloud_init[each.key].user_data
  monitoring    = var.detailed_monitoring
  ebs_optimized = true

  primary_network_interface {
    network_interface_id = aws_network_interface.chatd[each.key].id
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_size
  }

  tags = { Name = each.key }

  lifecycle {
    # A newer Debian image or changed first-boot settings must not replace a running server;
    # chatd's own settings go through Ansible.
    ignore_changes = [ami, user_data]
  }

  depends_on = [aws_eip.chatd, aws_route_table_association.public]
}

module "deploy" {
  source = "../modules/deploy"

  servers = {
    for name, i in aws_instance.chatd : name => {
      id   = i.id
      ipv4 = aws_eip.chatd[name].public_ip
      ipv6 = try(tolist(aws_network_interface.chatd[name].ipv6_addresses)[0], "")
    }
  }
  domain             = var.domain
  chatd_settings     = local.chatd_settings
  run_ansible        = var.run_ansible
  playbook           = local.playbook
  ansible_extra_args = var.ansible_extra_args
  work_dir           = abspath("${path.module}/.chatd")
  trigger_files      = local.trigger_files
  required_files     = [local.chatd_binary]

  # SSH must be open before the playbook starts (the rules are separate resources).
  depends_on = [aws_vpc_security_group_ingress_rule.chatd, aws_route_table_association.public]
}
