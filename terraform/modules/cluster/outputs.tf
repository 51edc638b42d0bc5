output "cluster" {
  description = "Whether this is a cluster (server_count > 1): private network, Redis, load balancer."
  value       = local.cluster
}

output "server_names" {
  description = "The chatd servers' names, NAME-1 to NAME-N."
  value       = local.server_names
}

output "chatd_private_ips" {
  description = "Each chatd server's private address (cluster only; empty map otherwise)."
  value       = local.chatd_private_ips
}

output "redis_name" {
  description = "The Redis server's name (cluster only; null otherwise)."
  value       = local.cluster ? local.redis_name : null
}

output "redis_private_ip" {
  description = "The Redis server's private address (cluster only; null otherwise)."
  value       = local.redis_private_ip
}

output "lb_private_ip" {
  description = "The load balancer's private address (cluster only; null otherwise)."
  value       = local.lb_private_ip
}

output "chatd_settings" {
  description = "The chatd role variables for the inventory: the operator's, plus on a cluster chatd_trusted_proxies (the load balancer) and, with a domain, chatd_allowed_origins (https://DOMAIN), unless the operator set them."
  value       = merge(local.cluster_settings, var.chatd_settings)
}

output "inventory_domain" {
  description = "chatd_domain for the hosts: the domain on one server (Caddy terminates TLS there), empty on a cluster (the load balancer does)."
  value       = local.cluster ? "" : var.domain
}

output "public_tcp_ports" {
  description = "TCP ports the chatd servers' cloud firewall opens to everyone: 80 and 443 on one server, none on a cluster (the load balancer reaches them on the private network)."
  value       = local.cluster ? [] : [80, 443]
}

output "prometheus_hosts" {
  description = "Inventory names that run Prometheus: the Redis server when monitoring is on."
  value       = var.monitoring ? [local.redis_name] : []
}
