output "urls" {
  description = "Where chatd answers: https://DOMAIN/ when a domain is set, else http:// on every server's IPv4 and IPv6 address."
  value       = local.urls
}

output "url" {
  description = "The first of urls: the address to open in a browser."
  value       = local.urls[0]
}

output "ipv4_addresses" {
  description = "Public IPv4 address of each server, by name."
  value       = tomap({ for name, s in var.servers : name => s.ipv4 })
}

output "ipv6_addresses" {
  description = "Public IPv6 address of each server, by name (\"\" where it has none)."
  value       = tomap({ for name, s in var.servers : name => s.ipv6 })
}

output "inventory" {
  description = "The Ansible inventory (INI) for ansible/site.yml."
  value       = module.inventory.content
}

output "inventory_file" {
  description = "Where the playbook run writes the inventory, for running ansible-playbook by hand (written only when run_ansible is on)."
  value       = "${var.work_dir}/inventory.ini"
}

output "playbook_run" {
  description = "Id of the latest playbook run (it changes whenever the playbook ran again); null when run_ansible is off."
  value       = one(terraform_data.playbook[*].id)
}
