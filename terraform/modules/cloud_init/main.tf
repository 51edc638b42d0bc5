# First-boot configuration (cloud-init user data) for a chatd host, shared by every cloud root.
#
# It only prepares the host for Ansible: host name, root's SSH keys, no password logins, python3 and
# security updates. Everything about chatd itself is Ansible's job (ansible/site.yml), so that a
# setting changed later is applied by re-running the playbook, not by replacing the server.
#
# The document is built as data and serialised with yamlencode, so no input can break its YAML.

locals {
  packages = distinct(concat(
    ["python3"],
    var.unattended_upgrades ? ["unattended-upgrades"] : [],
    var.extra_packages,
  ))

  # APT::Periodic switches on the daily apt timer's update and unattended-upgrade steps; Debian's
  # unattended-upgrades default policy then installs security updates only.
  auto_upgrades = <<-EOT
    APT::Periodic::Update-Package-Lists "1";
    APT::Periodic::Unattended-Upgrade "1";
  EOT

  cloud_config = {
    hostname          = var.hostname
    preserve_hostname = false
    # Ansible connects as root (ansible_user=root in the inventory). Debian's AWS images otherwise
    # put a "log in as admin" stub in root's authorized_keys; Hetzner's images already allow root.
    disable_root        = false
    ssh_pwauth          = false
    ssh_authorized_keys = var.ssh_authorized_keys
    package_update      = true
    package_upgrade     = var.upgrade_packages
    packages            = local.packages
    write_files = var.unattended_upgrades ? [{
      path        = "/etc/apt/apt.conf.d/20auto-upgrades"
      owner       = "root:root"
      permissions = "0644"
      content     = local.auto_upgrades
    }] : []
  }
}
