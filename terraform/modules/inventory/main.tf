# Renders the Ansible inventory that ansible/site.yml is run with: every host in group [chatd], with
# the address to connect to and the login user, and the chatd role's variables in [chatd:vars].
#
# This text is also the trigger of the deploy module's playbook run: a changed setting changes the
# inventory, which makes the next `terraform apply` run the playbook again.
locals {
  content = templatefile("${path.module}/inventory.ini.tftpl", {
    hosts        = var.hosts
    ansible_user = var.ansible_user
    domain       = var.domain
    settings     = var.settings
  })
}
