variable "servers" {
  description = "The servers a cloud root created: inventory name => { id (the cloud's server id), ipv4 (public, Ansible connects to it), ipv6 (public, or \"\") }."
  type = map(object({
    id   = string
    ipv4 = string
    ipv6 = optional(string, "")
  }))
  nullable = false

  validation {
    condition     = length(var.servers) > 0
    error_message = "Give at least one server."
  }
}

variable "domain" {
  description = "Public DNS name for HTTPS (chatd_domain: the role puts Caddy in front of chatd and gets a certificate). Empty: plain HTTP on the addresses."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.domain))
    error_message = "The domain must be empty or a lower-case DNS name such as chat.example.com (no scheme, no port, no trailing dot)."
  }
}

variable "chatd_settings" {
  description = "chatd role variables for every host (chatd_* => value), written to the inventory's [chatd:vars]; changing one re-runs the playbook."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k in keys(var.chatd_settings) : can(regex("^chatd_[a-z0-9_]+$", k)) && k != "chatd_domain"])
    error_message = "Setting names must be chatd role variables (chatd_ followed by lower-case letters, digits, '_'); the domain has its own variable."
  }
}

variable "ansible_user" {
  description = "The account Ansible logs in as."
  type        = string
  default     = "root"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ansible_user))
    error_message = "The Ansible user must be a POSIX account name."
  }
}

variable "run_ansible" {
  description = "Whether terraform apply runs the playbook (again whenever the inventory, a setting, a server or a watched file changed). Off: only the inventory is output."
  type        = bool
  default     = true
  nullable    = false
}

variable "playbook" {
  description = "Absolute path of the playbook to run: the repository's ansible/site.yml."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^/.*\\.ya?ml$", var.playbook))
    error_message = "The playbook must be an absolute path to a .yml or .yaml file."
  }
}

variable "ansible_playbook_command" {
  description = "The ansible-playbook program to run: a name looked up in PATH or a path."
  type        = string
  default     = "ansible-playbook"
  nullable    = false

  validation {
    condition     = can(regex("^[^\\s]+$", var.ansible_playbook_command))
    error_message = "Give one program name or path, without arguments (use ansible_extra_args for those)."
  }
}

variable "ansible_extra_args" {
  description = "More arguments for ansible-playbook, one per entry, e.g. [\"--diff\"] or [\"-e\", \"@secrets.yml\"]."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.ansible_extra_args : !can(regex("[\\r\\n]", a))])
    error_message = "An argument cannot contain a line break."
  }
}

variable "wait_for_hosts" {
  description = "Whether to wait, before the playbook, until every host answers over SSH and cloud-init has finished (a new server needs a minute)."
  type        = bool
  default     = true
  nullable    = false
}

variable "work_dir" {
  description = "Absolute path of a private folder for the rendered inventory.ini and the hosts' SSH keys (known_hosts); created when missing."
  type        = string
  nullable    = false

  validation {
    condition     = startswith(var.work_dir, "/")
    error_message = "The work folder must be an absolute path."
  }
}

variable "trigger_files" {
  description = "Absolute paths of files whose contents are part of a deploy (the role's files, the chatd binary): a change to any re-runs the playbook."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for f in var.trigger_files : startswith(f, "/")])
    error_message = "Trigger files must be absolute paths."
  }
}

variable "required_files" {
  description = "Absolute paths that must exist before the playbook can run (e.g. the chatd binary from cargo build --release); checked at plan time."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for f in var.required_files : startswith(f, "/")])
    error_message = "Required files must be absolute paths."
  }
}
