# The provider-free half of every cloud root: from the servers it created to a running chatd.
#
# Renders the inventory (modules/inventory), works out the public URLs, and runs ansible/site.yml
# through a terraform_data resource whose triggers are the inventory text itself, a hash of the chatd
# settings, the server ids and the contents of the watched files. A change to any of them replaces
# terraform_data, and its local-exec provisioner runs the playbook again: change a setting, run
# `terraform apply`, and the role reloads (or restarts) chatd. The plan shows which trigger changed.
#
# HashiCorp calls provisioners a last resort; here it is what makes one `terraform apply` deploy.
# Values reach the script through environment variables, never interpolated into a shell command.

module "inventory" {
  source = "../inventory"

  hosts                = { for name, s in var.servers : name => s.ipv4 }
  ansible_user         = var.ansible_user
  domain               = var.tls_on_hosts ? var.domain : ""
  settings             = var.chatd_settings
  private_addresses    = var.private_addresses
  redis_hosts          = { for name, s in var.redis_servers : name => { address = s.ipv4, private_address = s.private_ip } }
  prometheus_hosts     = var.prometheus_hosts
  ssh_private_key_file = var.ssh_private_key_file
}

locals {
  # Without a domain chatd itself answers on the addresses, on the port of chatd_listen (80 unless set).
  listen_port = try(regex(":([0-9]+)$", var.chatd_settings["chatd_listen"])[0], "80")
  port_suffix = local.listen_port == "80" ? "" : ":${local.listen_port}"

  # Behind a load balancer, its addresses (port 80); else every server's.
  urls = var.domain != "" ? ["https://${var.domain}/"] : var.load_balancer != null ? concat(
    ["http://${var.load_balancer.host}/"],
    var.load_balancer.ipv6 != "" ? ["http://[${var.load_balancer.ipv6}]/"] : [],
    ) : flatten([
      for name, s in var.servers : concat(
        ["http://${s.ipv4}${local.port_suffix}/"],
        s.ipv6 != "" ? ["http://[${s.ipv6}]${local.port_suffix}/"] : [],
      )
  ])
  all_servers = merge(
    { for name, s in var.servers : name => { id = s.id, ipv4 = s.ipv4 } },
    { for name, s in var.redis_servers : name => { id = s.id, ipv4 = s.ipv4 } },
  )

  files_digest = sha256(join("\n", [
    for f in sort(distinct(var.trigger_files)) : "${f} ${fileexists(f) ? filesha256(f) : "missing"}"
  ]))
  missing_files = [for f in var.required_files : f if !fileexists(f)]
}

resource "terraform_data" "playbook" {
  count = var.run_ansible ? 1 : 0

  triggers_replace = {
    inventory = module.inventory.content
    settings  = sha256(jsonencode(var.chatd_settings))
    servers   = jsonencode({ for name, s in local.all_servers : name => s.id })
    playbook  = var.playbook
    files     = local.files_digest
  }

  lifecycle {
    precondition {
      condition     = fileexists(var.playbook)
      error_message = "No playbook at ${var.playbook}: it is ansible/site.yml of the chatd repository (or set run_ansible = false)."
    }

    precondition {
      condition     = length(local.missing_files) == 0
      error_message = "Missing before the playbook can run: ${join(", ", local.missing_files)}. Build chatd first: cargo build --release."
    }
  }

  provisioner "local-exec" {
    interpreter = ["/bin/bash"]
    command     = "${abspath(path.module)}/run-playbook.sh"
    environment = {
      CHATD_INVENTORY          = module.inventory.content
      CHATD_WORK_DIR           = var.work_dir
      CHATD_PLAYBOOK           = var.playbook
      CHATD_WAIT_PLAYBOOK      = var.wait_for_hosts ? "${abspath(path.module)}/wait.yml" : ""
      CHATD_HOST_IDS           = join("\n", [for name, s in local.all_servers : "${s.ipv4} ${s.id}"])
      CHATD_ANSIBLE_PLAYBOOK   = var.ansible_playbook_command
      CHATD_ANSIBLE_EXTRA_ARGS = join("\n", var.ansible_extra_args)
    }
  }
}
