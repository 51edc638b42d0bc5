# chatd on AWS: a small VPC of its own (IPv4 and IPv6), a security group built from the shared
# firewall rules, server_count Debian instances with an Elastic IP each, then the playbook. With
# more than one server: a Redis instance, an application load balancer in front (two subnets, as
# an ALB needs), /healthz as its health check, and with a domain an ACM certificate.
# The provider-free modules are the Hetzner root's (../modules), so the firewall policy, the
# cluster's shape, first-boot configuration, inventory and playbook run are the same on both clouds.

locals {
  repo_dir     = abspath("${path.module}/../..")
  playbook     = var.ansible_playbook != "" ? abspath(pathexpand(var.ansible_playbook)) : "${local.repo_dir}/ansible/site.yml"
  playbook_dir = dirname(local.playbook)
  chatd_binary = var.chatd_binary != "" ? abspath(pathexpand(var.chatd_binary)) : "${local.repo_dir}/target/release/chatd"

  # A key pair already in the region (ssh_key_name), or ssh_public_key_file, uploaded.
  ssh_public_key = var.ssh_key_name != "" ? trimspace(one(data.aws_key_pair.existing[*].public_key)) : try(trimspace(file(pathexpand(var.ssh_public_key_file))), "")
  ssh_private_key_file = (
    var.ssh_private_key_file != "" ? abspath(pathexpand(var.ssh_private_key_file)) :
    var.ssh_key_name == "" ? abspath(trimsuffix(pathexpand(var.ssh_public_key_file), ".pub")) : ""
  )
  key_name     = var.ssh_key_name != "" ? var.ssh_key_name : one(aws_key_pair.admin[*].key_name)
  server_names = toset(module.cluster.server_names)
  cluster      = module.cluster.cluster
  tags         = merge(var.tags, { app = "chatd", deployment = var.name })
  prefix_len   = tonumber(split("/", var.vpc_cidr)[1])
  subnet_a     = cidrsubnet(var.vpc_cidr, 24 - local.prefix_len, 0)
  subnet_b     = cidrsubnet(var.vpc_cidr, 24 - local.prefix_len, 1)
  zone_a       = var.availability_zone != "" ? var.availability_zone : "${var.region}a"

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

module "cluster" {
  source = "../modules/cluster"

  name           = var.name
  server_count   = var.server_count
  private_cidr   = local.subnet_a
  redis_host     = 5
  domain         = var.domain
  chatd_settings = local.chatd_settings
  monitoring     = var.monitoring
  # The ALB's nodes take addresses in both public subnets, and change: trust the subnets.
  proxy_cidrs = [local.subnet_a, local.subnet_b]
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
  # One server: 80 and 443 from anywhere. A cluster: none (the load balancer, below).
  public_tcp_ports = module.cluster.public_tcp_ports
}

module "redis_firewall_rules" {
  source = "../modules/firewall_rules"

  admin_cidrs      = var.admin_cidrs
  public_tcp_ports = []
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
  availability_zone               = local.zone_a
  cidr_block                      = local.subnet_a
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

# A load balancer needs subnets in two zones: the second holds only its nodes.
resource "aws_subnet" "public_b" {
  count = local.cluster ? 1 : 0

  vpc_id                          = aws_vpc.chatd.id
  availability_zone               = var.availability_zone_b != "" ? var.availability_zone_b : "${var.region}b"
  cidr_block                      = local.subnet_b
  ipv6_cidr_block                 = cidrsubnet(aws_vpc.chatd.ipv6_cidr_block, 8, 1)
  assign_ipv6_address_on_creation = true
  map_public_ip_on_launch         = false

  tags = { Name = "${var.name}-public-b" }
}

resource "aws_route_table_association" "public_b" {
  count = local.cluster ? 1 : 0

  subnet_id      = aws_subnet.public_b[0].id
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

data "aws_key_pair" "existing" {
  count = var.ssh_key_name != "" ? 1 : 0

  key_name           = var.ssh_key_name
  include_public_key = true
}

resource "aws_key_pair" "admin" {
  count = var.ssh_key_name == "" ? 1 : 0

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
  # A cluster's servers get fixed private addresses (modules/cluster); one server, any.
  private_ips = local.cluster ? [module.cluster.chatd_private_ips[each.key]] : null

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
  key_name      = local.key_name
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

    precondition {
      condition     = local.ssh_public_key != ""
      error_message = "No SSH public key: set ssh_key_name to a key pair already in the region, or ssh_public_key_file to a readable .pub file."
    }
  }

  depends_on = [aws_eip.chatd, aws_route_table_association.public]
}

# --- Cluster: Redis -------------------------------------------------------------------------------

resource "aws_security_group" "redis" {
  count = local.cluster ? 1 : 0

  name        = "${var.name}-redis"
  description = "chatd Redis: SSH from the admin networks, Redis from the chatd servers"
  vpc_id      = aws_vpc.chatd.id

  tags = { Name = "${var.name}-redis" }
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  for_each = local.cluster ? module.redis_firewall_rules.ingress_by_cidr : {}

  security_group_id = aws_security_group.redis[0].id
  description       = each.value.description
  ip_protocol       = each.value.protocol == "icmp" ? (each.value.ipv6 ? "icmpv6" : "icmp") : each.value.protocol
  from_port         = each.value.port == null ? -1 : each.value.port
  to_port           = each.value.port == null ? -1 : each.value.port
  cidr_ipv4         = each.value.ipv6 ? null : each.value.cidr
  cidr_ipv6         = each.value.ipv6 ? each.value.cidr : null

  tags = { Name = "${var.name}-redis ${each.key}" }
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_chatd" {
  count = local.cluster ? 1 : 0

  security_group_id            = aws_security_group.redis[0].id
  description                  = "Redis from the chatd servers"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.chatd.id

  tags = { Name = "${var.name}-redis from chatd" }
}

resource "aws_vpc_security_group_egress_rule" "redis" {
  for_each = local.cluster ? local.egress : {}

  security_group_id = aws_security_group.redis[0].id
  description       = "HTTP(S) out: Debian packages"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr_ipv4
  cidr_ipv6         = each.value.cidr_ipv6

  tags = { Name = "${var.name}-redis out ${each.key}" }
}

resource "aws_vpc_security_group_egress_rule" "chatd_to_redis" {
  count = local.cluster ? 1 : 0

  security_group_id            = aws_security_group.chatd.id
  description                  = "Redis on the Redis server"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis[0].id

  tags = { Name = "${var.name} out redis" }
}

# Prometheus (monitoring) on the Redis server scrapes chatd's /metrics on port 80.
resource "aws_vpc_security_group_ingress_rule" "chatd_from_prometheus" {
  count = var.monitoring ? 1 : 0

  security_group_id            = aws_security_group.chatd.id
  description                  = "chatd /metrics from Prometheus"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.redis[0].id

  tags = { Name = "${var.name} from prometheus" }
}

resource "aws_vpc_security_group_egress_rule" "prometheus_to_chatd" {
  count = var.monitoring ? 1 : 0

  security_group_id            = aws_security_group.redis[0].id
  description                  = "Prometheus scrapes chatd"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.chatd.id

  tags = { Name = "${var.name}-redis out chatd" }
}

module "redis_cloud_init" {
  source = "../modules/cloud_init"
  count  = local.cluster ? 1 : 0

  hostname            = module.cluster.redis_name
  ssh_authorized_keys = [local.ssh_public_key]
  unattended_upgrades = var.unattended_upgrades
}

resource "aws_network_interface" "redis" {
  count = local.cluster ? 1 : 0

  subnet_id          = aws_subnet.public.id
  security_groups    = [aws_security_group.redis[0].id]
  private_ips        = [module.cluster.redis_private_ip]
  ipv6_address_count = 1

  tags = { Name = module.cluster.redis_name }
}

resource "aws_eip" "redis" {
  count = local.cluster ? 1 : 0

  domain            = "vpc"
  network_interface = aws_network_interface.redis[0].id

  tags = { Name = module.cluster.redis_name }

  depends_on = [aws_internet_gateway.chatd]
}

resource "aws_instance" "redis" {
  count = local.cluster ? 1 : 0

  #checkov:skip=CKV2_AWS_41:Redis calls no AWS API; an instance profile would only put credentials on the host.
  ami           = data.aws_ami.debian.id
  instance_type = var.redis_instance_type
  key_name      = local.key_name
  user_data     = module.redis_cloud_init[0].user_data
  monitoring    = var.detailed_monitoring
  ebs_optimized = true

  primary_network_interface {
    network_interface_id = aws_network_interface.redis[0].id
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

  tags = { Name = module.cluster.redis_name, role = "redis" }

  lifecycle {
    ignore_changes = [ami, user_data]
  }

  depends_on = [aws_eip.redis, aws_route_table_association.public]
}

# --- Cluster: the load balancer -----------------------------------------------------------------------

resource "aws_security_group" "alb" {
  count = local.cluster ? 1 : 0

  name        = "${var.name}-alb"
  description = "chatd load balancer: HTTP and HTTPS from anywhere, HTTP to the chatd servers"
  vpc_id      = aws_vpc.chatd.id

  tags = { Name = "${var.name}-alb" }
}

resource "aws_vpc_security_group_ingress_rule" "alb" {
  for_each = local.cluster ? local.egress : {}

  #checkov:skip=CKV_AWS_260:The load balancer is the public entrance: port 80 answers with a redirect to HTTPS when a domain is set, and serves the chat without one.
  security_group_id = aws_security_group.alb[0].id
  description       = "HTTP(S) from anywhere"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr_ipv4
  cidr_ipv6         = each.value.cidr_ipv6

  tags = { Name = "${var.name}-alb in ${each.key}" }
}

resource "aws_vpc_security_group_egress_rule" "alb_to_chatd" {
  count = local.cluster ? 1 : 0

  security_group_id            = aws_security_group.alb[0].id
  description                  = "HTTP to the chatd servers"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.chatd.id

  tags = { Name = "${var.name}-alb out chatd" }
}

resource "aws_vpc_security_group_ingress_rule" "chatd_from_alb" {
  count = local.cluster ? 1 : 0

  #checkov:skip=CKV_AWS_260:The source is the load balancer's security group, not 0.0.0.0/0 (checkov does not tell them apart).

  security_group_id            = aws_security_group.chatd.id
  description                  = "HTTP from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb[0].id

  tags = { Name = "${var.name} from alb" }
}

resource "aws_lb" "chatd" {
  count = local.cluster ? 1 : 0

  #checkov:skip=CKV_AWS_91:Access logs would record every visitor's address, which chatd deliberately keeps out of storage.
  #checkov:skip=CKV2_AWS_28:A WAF does not inspect WebSocket frames; chatd rate-limits and closes abusers itself.
  #checkov:skip=CKV_AWS_150:Deletion protection would make terraform destroy fail; the load balancer holds no data.
  #checkov:skip=CKV2_AWS_20:With a domain its port 80 listener redirects to HTTPS (aws_lb_listener.http); without one there is no certificate, and HTTP is all there is.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  ip_address_type            = "dualstack"
  subnets                    = [aws_subnet.public.id, aws_subnet.public_b[0].id]
  security_groups            = [aws_security_group.alb[0].id]
  drop_invalid_header_fields = true
  # WebSockets stay open for a long time; chatd pings idle ones every idle_timeout (60 s).
  idle_timeout = 3600

  tags = { Name = var.name }

  depends_on = [aws_internet_gateway.chatd]
}

resource "aws_lb_target_group" "chatd" {
  count = local.cluster ? 1 : 0

  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; inside the VPC chatd is reached over HTTP on its private address.
  name                 = var.name
  port                 = 80
  protocol             = "HTTP"
  vpc_id               = aws_vpc.chatd.id
  target_type          = "instance"
  deregistration_delay = 15

  # A server that is stopping, or whose Redis link is down, answers 503 and gets no new people.
  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = { Name = var.name }
}

resource "aws_lb_target_group_attachment" "chatd" {
  for_each = local.cluster ? local.server_names : toset([])

  target_group_arn = aws_lb_target_group.chatd[0].arn
  target_id        = aws_instance.chatd[each.key].id
  port             = 80
}

resource "aws_acm_certificate" "chatd" {
  count = local.cluster && var.domain != "" ? 1 : 0

  domain_name       = var.domain
  validation_method = "DNS"

  tags = { Name = var.domain }

  lifecycle {
    create_before_destroy = true
  }
}

# With route53_zone_id, the validation record and the domain's A/AAAA records are made here; else
# the output certificate_validation names the CNAME to create, and apply waits for it.
resource "aws_route53_record" "validation" {
  for_each = local.cluster && var.domain != "" && var.route53_zone_id != "" ? {
    for o in aws_acm_certificate.chatd[0].domain_validation_options : o.domain_name => o
  } : {}

  zone_id = var.route53_zone_id
  name    = each.value.resource_record_name
  type    = each.value.resource_record_type
  records = [each.value.resource_record_value]
  ttl     = 300
}

resource "aws_acm_certificate_validation" "chatd" {
  count = local.cluster && var.domain != "" ? 1 : 0

  certificate_arn         = aws_acm_certificate.chatd[0].arn
  validation_record_fqdns = var.route53_zone_id != "" ? [for r in aws_route53_record.validation : r.fqdn] : null
}

resource "aws_route53_record" "domain" {
  for_each = local.cluster && var.domain != "" && var.route53_zone_id != "" ? toset(["A", "AAAA"]) : toset([])

  zone_id = var.route53_zone_id
  name    = var.domain
  type    = each.key

  alias {
    name                   = aws_lb.chatd[0].dns_name
    zone_id                = aws_lb.chatd[0].zone_id
    evaluate_target_health = true
  }
}

resource "aws_lb_listener" "https" {
  count = local.cluster && var.domain != "" ? 1 : 0

  load_balancer_arn = aws_lb.chatd[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = aws_acm_certificate_validation.chatd[0].certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.chatd[0].arn
  }
}

# Port 80: a redirect to https:// with a domain; the chat itself without one.
resource "aws_lb_listener" "http" {
  count = local.cluster ? 1 : 0

  #checkov:skip=CKV_AWS_2:Without a domain there is no certificate to serve HTTPS with; with one, this listener only redirects.
  #checkov:skip=CKV_AWS_103:This listener does not do TLS.
  load_balancer_arn = aws_lb.chatd[0].arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = var.domain != "" ? "redirect" : "forward"
    target_group_arn = var.domain != "" ? null : aws_lb_target_group.chatd[0].arn

    dynamic "redirect" {
      for_each = var.domain != "" ? [1] : []
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
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
  private_addresses = module.cluster.chatd_private_ips
  redis_servers = {
    for i in aws_instance.redis : module.cluster.redis_name => {
      id = i.id, ipv4 = aws_eip.redis[0].public_ip, private_ip = module.cluster.redis_private_ip
    }
  }
  prometheus_hosts = module.cluster.prometheus_hosts
  # An ALB has no fixed addresses: its DNS name (dual-stack).
  load_balancer        = one([for lb in aws_lb.chatd : { host = lb.dns_name }])
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

  # SSH must be open before the playbook starts (the rules are separate resources), and Redis
  # reachable from the chatd servers.
  depends_on = [
    aws_vpc_security_group_ingress_rule.chatd, aws_vpc_security_group_ingress_rule.redis,
    aws_vpc_security_group_ingress_rule.redis_from_chatd, aws_vpc_security_group_egress_rule.chatd_to_redis,
    aws_route_table_association.public,
  ]
}
