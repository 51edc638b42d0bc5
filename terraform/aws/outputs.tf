output "url" {
  description = "Open this in a browser: https://DOMAIN/ with a domain, else http://IPv4/ of the first server."
  value       = module.deploy.url
}

output "urls" {
  description = "Every address chatd answers on (with a domain: https://DOMAIN/; without: http:// on each server's IPv4 and IPv6 address)."
  value       = module.deploy.urls
}

output "ipv4_addresses" {
  description = "Public IPv4 address of each server (point the domain's A record here)."
  value       = module.deploy.ipv4_addresses
}

output "ipv6_addresses" {
  description = "Public IPv6 address of each server (point the domain's AAAA record here)."
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
  description = "Where the playbook run wrote that inventory: ansible-playbook -i THIS ../../ansible/site.yml re-runs the role by hand."
  value       = module.deploy.inventory_file
}
