variable "admin_cidrs" {
  description = "Networks (CIDR, IPv4 or IPv6) allowed to reach SSH, e.g. [\"203.0.113.7/32\"]: the operator's own address."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.admin_cidrs) > 0
    error_message = "List at least one network that may reach SSH (your own address as a /32 or /128)."
  }

  validation {
    condition     = alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "Each entry must be a network in CIDR notation, e.g. 203.0.113.7/32 or 2001:db8::/48."
  }

  # Clouds refuse "203.0.113.7/24" (host bits set); say so here rather than halfway through an apply.
  # try(): before Terraform 1.12 `||` does not short-circuit, so `!can(x) || f(x)` would still fail
  # on an entry that is not a CIDR; the validation above reports that entry.
  validation {
    condition     = alltrue([for c in var.admin_cidrs : try(lower(c) == lower("${cidrhost(c, 0)}/${split("/", c)[1]}"), true)])
    error_message = "Each network must be written with its host bits zero, e.g. 203.0.113.0/24, not 203.0.113.7/24."
  }

  validation {
    condition     = alltrue([for c in var.admin_cidrs : try(tonumber(split("/", c)[1]) > 0, true)])
    error_message = "SSH is not opened to the whole internet (0.0.0.0/0 or ::/0): list the networks you administer from."
  }
}

variable "ssh_port" {
  description = "TCP port sshd listens on."
  type        = number
  default     = 22
  nullable    = false

  validation {
    condition     = var.ssh_port >= 1 && var.ssh_port <= 65535 && floor(var.ssh_port) == var.ssh_port
    error_message = "The SSH port must be a whole number from 1 to 65535."
  }
}

variable "public_tcp_ports" {
  description = "TCP ports open to everyone: 80 (HTTP, and the ACME challenge for HTTPS) and 443 (HTTPS)."
  type        = list(number)
  default     = [80, 443]
  nullable    = false

  validation {
    condition     = alltrue([for p in var.public_tcp_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "Each public port must be a whole number from 1 to 65535."
  }

  validation {
    condition     = !contains(var.public_tcp_ports, var.ssh_port)
    error_message = "The SSH port is only opened to admin_cidrs; it cannot also be a public port."
  }

  validation {
    condition     = length(distinct(var.public_tcp_ports)) == length(var.public_tcp_ports)
    error_message = "Each public port is listed once."
  }
}

variable "allow_icmp" {
  description = "Whether ICMP (ping, and path-MTU messages that IPv6 cannot work without) is allowed from anywhere."
  type        = bool
  default     = true
  nullable    = false
}
