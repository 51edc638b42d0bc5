variable "hosts" {
  description = "The chatd hosts: inventory name => the public address Ansible connects to (IPv4 or IPv6)."
  type        = map(string)
  nullable    = false

  validation {
    condition     = length(var.hosts) > 0
    error_message = "The inventory needs at least one host."
  }

  validation {
    condition     = alltrue([for name in keys(var.hosts) : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", name))])
    error_message = "Host names must be DNS labels (a-z, 0-9 and inner hyphens): they become inventory host names."
  }

  validation {
    condition     = alltrue([for a in values(var.hosts) : can(cidrhost(strcontains(a, ":") ? "${a}/128" : "${a}/32", 0))])
    error_message = "Each address must be a plain IPv4 or IPv6 address, without a prefix length."
  }
}

variable "ansible_user" {
  description = "The account Ansible logs in as (the role needs root or sudo; the cloud roots use root)."
  type        = string
  default     = "root"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ansible_user))
    error_message = "The Ansible user must be a POSIX account name."
  }
}

variable "domain" {
  description = "Public DNS name for HTTPS (becomes chatd_domain; the role then puts Caddy in front of chatd). Empty: plain HTTP on the addresses."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.domain))
    error_message = "The domain must be empty or a lower-case DNS name such as chat.example.com (no scheme, no port, no trailing dot)."
  }
}

variable "settings" {
  description = "More chatd role variables for every host, written to [chatd:vars] as name=value. Ansible reads a value that is a Python literal as one (20000 a number, a [list], true/false booleans), anything else as text."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k in keys(var.settings) : can(regex("^chatd_[a-z0-9_]+$", k))])
    error_message = "Setting names must be chatd role variables: chatd_ followed by lower-case letters, digits and underscores."
  }

  validation {
    condition     = !contains(keys(var.settings), "chatd_domain")
    error_message = "Set the domain with the domain variable, not in the settings map."
  }

  validation {
    condition     = alltrue([for v in values(var.settings) : !can(regex("[\\r\\n]", v))])
    error_message = "A setting value must be a single line: the inventory is an INI file."
  }
}

variable "private_addresses" {
  description = "Each chatd host's address on the private network (inventory name => IPv4), written as private_address: the roles wire the cluster (Redis, scrapes) from it. Empty for a single server."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for a in values(var.private_addresses) : can(cidrhost("${a}/32", 0))])
    error_message = "Each private address must be a plain IPv4 address."
  }
}

variable "redis_hosts" {
  description = "The cluster's Redis server(s), inventory name => { address (Ansible connects to it), private_address }: the group [redis]. Empty: no cluster."
  type = map(object({
    address         = string
    private_address = string
  }))
  default  = {}
  nullable = false

  validation {
    condition     = alltrue([for name in keys(var.redis_hosts) : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", name))])
    error_message = "Redis host names must be DNS labels (a-z, 0-9 and inner hyphens)."
  }

  validation {
    condition     = alltrue([for h in values(var.redis_hosts) : can(cidrhost("${h.private_address}/32", 0))])
    error_message = "A Redis host's private_address must be a plain IPv4 address."
  }
}

variable "prometheus_hosts" {
  description = "Inventory names (of hosts or redis_hosts) that run Prometheus: the group [prometheus]."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for n in var.prometheus_hosts : contains(concat(keys(var.hosts), keys(var.redis_hosts)), n)])
    error_message = "Each Prometheus host must be one of hosts or redis_hosts."
  }
}

variable "ssh_private_key_file" {
  description = "The SSH private key Ansible logs in with (ansible_ssh_private_key_file in [all:vars]); empty: ssh's own default keys and agent."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = !can(regex("[\\s]", var.ssh_private_key_file))
    error_message = "The key path cannot contain white space (INI inventory value)."
  }
}
