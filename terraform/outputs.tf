output "url" {
  description = "Open this in a browser: https://DOMAIN/ with a domain, else http:// on the load balancer's IPv4 (several servers) or the server's."
  value       = module.deploy.url
}

output "urls" {
  description = "Every address chatd answers on (with a domain: https://DOMAIN/; without: http:// on each server's IPv4 and IPv6 address)."
  value       = module.deploy.urls
}

output "ipv4_addresses" {
  description = "Public IPv4 address of each chatd server (one server: point the domain's A record here)."
  value       = module.deploy.ipv4_addresses
}

output "ipv6_addresses" {
  description = "Public IPv6 address of each chatd server (one server: point the domain's AAAA record here)."
  value       = module.deploy.ipv6_addresses
}

output "ssh" {
  description = "How to log in to each server."
  value       = { for name, ip in module.deploy.ipv4_addresses : name => "ssh root@${ip}" }
}

output "ansible_inventory" {
  description = "The Ansible inventory Terraform renders (INI), for running ansible-playbook by hand."
  value       = module.deploy.inventory
}

output "ansible_inventory_file" {
  description = "Where the playbook run wrote that inventory: ansible-playbook -i THIS ../ansible/site.yml re-runs the role by hand."
  value       = module.deploy.inventory_file
}

output "load_balancer" {
  description = "The load balancer's public addresses (several servers: point the domain's A and AAAA records here); null with one server."
  value       = one([for lb in hcloud_load_balancer.chatd : { ipv4 = lb.ipv4, ipv6 = lb.ipv6 }])
}

output "redis" {
  description = "The Redis server (several servers): its public address for SSH and its private one, where chatd and Prometheus reach it; null with one server."
  value       = one([for s in hcloud_server.redis : { name = s.name, ipv4 = s.ipv4_address, private_ip = module.cluster.redis_private_ip }])
}
