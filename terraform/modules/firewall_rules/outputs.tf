output "ingress_rules" {
  description = "Inbound rules, one per service: key, description, protocol (tcp or icmp), port (null for icmp), ipv4_cidrs, ipv6_cidrs and cidrs (both families)."
  value = tolist([for r in local.rules : merge(r, {
    cidrs = concat(r.ipv4_cidrs, r.ipv6_cidrs)
  })])
}

output "ingress_by_cidr" {
  description = "The same rules split to one entry per source network, keyed \"<rule key> <cidr>\", for clouds whose rules hold one network each (AWS)."
  value = merge([for r in local.rules : merge(
    { for c in r.ipv4_cidrs : "${r.key} ${c}" => { rule = r.key, description = r.description, protocol = r.protocol, port = r.port, cidr = c, ipv6 = false } },
    { for c in r.ipv6_cidrs : "${r.key} ${c}" => { rule = r.key, description = r.description, protocol = r.protocol, port = r.port, cidr = c, ipv6 = true } },
  )]...)
}
