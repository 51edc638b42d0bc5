output "content" {
  description = "The inventory, INI format: hosts in [chatd], chatd_domain and the settings in [chatd:vars]."
  value       = local.content
}
