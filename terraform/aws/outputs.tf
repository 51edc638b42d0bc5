output "url" {
  description = "Open this in a browser: https://DOMAIN/ with a domain, else http:// on the load balancer's name (several servers) or the server's IPv4."
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

output "load_balancer" {
  description = "The load balancer's DNS name (several servers: point the domain here, CNAME or alias); null with one server."
  value       = one(aws_lb.chatd[*].dns_name)
}

output "certificate_validation" {
  description = "The DNS record ACM needs to issue the domain's certificate (several servers with a domain and no route53_zone_id): create it, apply waits until it exists."
  value       = [for c in aws_acm_certificate.chatd : [for o in c.domain_validation_options : { name = o.resource_record_name, type = o.resource_record_type, value = o.resource_record_value }]]
}

output "redis" {
  description = "The Redis instance (several servers): its public address for SSH and its private one; null with one server."
  value       = one([for i in aws_instance.redis : { name = module.cluster.redis_name, ipv4 = aws_eip.redis[0].public_ip, private_ip = module.cluster.redis_private_ip }])
}
