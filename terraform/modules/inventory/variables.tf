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
