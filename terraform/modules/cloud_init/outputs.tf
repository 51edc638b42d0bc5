output "user_data" {
  description = "The cloud-config document to pass as the server's user data (starts with #cloud-config)."
  value       = "#cloud-config\n${yamlencode(local.cloud_config)}"
}

output "packages" {
  description = "The Debian packages installed at first boot."
  value       = local.packages
}
