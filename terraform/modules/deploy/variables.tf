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
  description = "Public DNS name for HTTPS, or empty. With tls_on_hosts it becomes chatd_domain (the role puts Caddy in front of chatd and gets a certificate); url is https://DOMAIN/ either way."
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

variable "tls_on_hosts" {
  description = "Whether the hosts terminate TLS for the domain (Caddy, one server). false: a load balancer does, and the inventory's chatd_domain stays empty."
  type        = bool
  default     = true
  nullable    = false
}

variable "private_addresses" {
  description = "Each chatd server's private address (name => IPv4), for a cluster; the roles wire Redis and Prometheus from it."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for a in values(var.private_addresses) : can(cidrhost("${a}/32", 0))])
    error_message = "Each private address must be a plain IPv4 address."
  }
}

variable "redis_servers" {
  description = "The cluster's Redis server(s): name => { id, ipv4 (public, Ansible connects to it), private_ip }. Empty: no cluster."
  type = map(object({
    id         = string
    ipv4       = string
    private_ip = string
  }))
  default  = {}
  nullable = false

  validation {
    condition     = alltrue([for s in values(var.redis_servers) : can(cidrhost("${s.private_ip}/32", 0))])
    error_message = "A Redis server's private_ip must be a plain IPv4 address."
  }
}

variable "prometheus_hosts" {
  description = "Names (of servers or redis_servers) that run Prometheus."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for n in var.prometheus_hosts : contains(concat(keys(var.servers), keys(var.redis_servers)), n)])
    error_message = "Each Prometheus host must be one of servers or redis_servers."
  }
}

variable "load_balancer" {
  description = "The load balancer in front of the chatd servers: { host (its public IPv4 address or DNS name), ipv6 (optional) }, which url and urls then name. null: none."
  type = object({
    host = string
    ipv6 = optional(string, "")
  })
  default = null

  validation {
    condition     = var.load_balancer == null || can(regex("^[A-Za-z0-9.-]+$", try(var.load_balancer.host, "")))
    error_message = "The load balancer's host must be an IPv4 address or a DNS name (no scheme, no port)."
  }
}

variable "ssh_private_key_file" {
  description = "The SSH private key Ansible logs in with (written to the inventory); empty: ssh's defaults and agent."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = !can(regex("\\s", var.ssh_private_key_file))
    error_message = "The key path cannot contain white space."
  }
}
