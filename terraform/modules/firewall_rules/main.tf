# The chatd firewall as data: which traffic may reach a chatd host. Every cloud root turns these
# rules into its own resources (hcloud_firewall rules, AWS security group rules), so the policy is
# written and tested once. Everything not listed is dropped; outbound traffic is each root's concern.

locals {
  anywhere_ipv4 = tolist(["0.0.0.0/0"])
  anywhere_ipv6 = tolist(["::/0"])
  admin_ipv4    = tolist([for c in var.admin_cidrs : c if !strcontains(c, ":")])
  admin_ipv6    = tolist([for c in var.admin_cidrs : lower(c) if strcontains(c, ":")])

  rules = tolist(concat(
    [{
      key         = "ssh"
      description = "SSH from the admin networks (Ansible)"
      protocol    = "tcp"
      port        = var.ssh_port
      ipv4_cidrs  = local.admin_ipv4
      ipv6_cidrs  = local.admin_ipv6
    }],
    [for p in var.public_tcp_ports : {
      key         = "tcp-${p}"
      description = p == 80 ? "HTTP from anywhere" : p == 443 ? "HTTPS from anywhere" : "TCP ${p} from anywhere"
      protocol    = "tcp"
      port        = p
      ipv4_cidrs  = local.anywhere_ipv4
      ipv6_cidrs  = local.anywhere_ipv6
    }],
    var.allow_icmp ? [{
      key         = "icmp"
      description = "ICMP from anywhere (ping, path MTU discovery)"
      protocol    = "icmp"
      port        = null
      ipv4_cidrs  = local.anywhere_ipv4
      ipv6_cidrs  = local.anywhere_ipv6
    }] : [],
  ))
}
