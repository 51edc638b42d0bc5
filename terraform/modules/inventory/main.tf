# Renders the Ansible inventory that ansible/site.yml is run with: every host in group [chatd], with
# the address to connect to, the login user and its private_address (a cluster), the cluster's
# Redis in [redis], Prometheus in [prometheus], the SSH key in [all:vars], and the chatd role's
# variables in [chatd:vars].
#
# This text is also the trigger of the deploy module's playbook run: a changed setting changes the
# inventory, which makes the next `terraform apply` run the playbook again.
locals {
  content = templatefile("${path.module}/inventory.ini.tftpl", {
    hosts                = var.hosts
    ansible_user         = var.ansible_user
    domain               = var.domain
    settings             = var.settings
    private_addresses    = var.private_addresses
    redis_hosts          = var.redis_hosts
    prometheus_hosts     = var.prometheus_hosts
    ssh_private_key_file = var.ssh_private_key_file
  })
}
