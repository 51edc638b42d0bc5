# The shape of a deployment, as data: which servers exist, their private addresses, and what the
# Ansible inventory needs to turn them into one crowd. No provider: both cloud roots use it, and
# tests/terraform/run.sh tests it with `terraform test`.
#
# One server: no private network, no Redis, no load balancer; chatd serves the web ports itself
# (Caddy with a domain). Several: a private subnet with Redis on .2, the chatd servers on .10
# onwards and the load balancer on the last usable address; the load balancer terminates TLS and
# passes WebSockets to chatd on port 80, which the cloud firewall keeps closed to the internet.

locals {
  cluster      = var.server_count > 1
  server_names = [for i in range(var.server_count) : "${var.name}-${i + 1}"]
  redis_name   = "${var.name}-redis"

  chatd_private_ips = local.cluster ? { for i, n in local.server_names : n => cidrhost(var.private_cidr, 10 + i) } : {}
  redis_private_ip  = local.cluster ? cidrhost(var.private_cidr, var.redis_host) : null
  # The last usable address: -2 skips the broadcast address.
  lb_private_ip = local.cluster ? cidrhost(var.private_cidr, -2) : null

  proxies = length(var.proxy_cidrs) > 0 ? var.proxy_cidrs : compact([local.lb_private_ip])

  # What the cluster adds to the operator's settings (theirs win).
  cluster_settings = local.cluster ? merge(
    { chatd_trusted_proxies = jsonencode(local.proxies) },
    var.domain != "" ? { chatd_allowed_origins = jsonencode(["https://${var.domain}"]) } : {},
  ) : {}
}
