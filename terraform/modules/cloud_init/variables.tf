variable "hostname" {
  description = "Host name the server gives itself at first boot (one DNS label: a-z, 0-9 and inner hyphens)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.hostname))
    error_message = "The hostname must be one DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'."
  }
}

variable "ssh_authorized_keys" {
  description = "OpenSSH public keys (one line each) allowed to log in as root, which is how Ansible connects."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.ssh_authorized_keys) > 0
    error_message = "Give at least one SSH public key, or nobody can log in to run Ansible."
  }

  validation {
    condition = alltrue([
      for k in var.ssh_authorized_keys :
      can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\\.com|sk-ecdsa-sha2-nistp256@openssh\\.com) [A-Za-z0-9+/]+={0,3}( [^\\r\\n]*)?$", k))
    ])
    error_message = "Each key must be one line of an OpenSSH public key file (e.g. the content of ~/.ssh/id_ed25519.pub), not a private key."
  }
}

variable "upgrade_packages" {
  description = "Whether first boot upgrades every installed package (slower first boot, no known-vulnerable packages)."
  type        = bool
  default     = true
  nullable    = false
}

variable "unattended_upgrades" {
  description = "Whether to install unattended-upgrades and switch on Debian's daily security updates."
  type        = bool
  default     = true
  nullable    = false
}

variable "extra_packages" {
  description = "More Debian packages to install at first boot, besides python3 (which Ansible needs)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for p in var.extra_packages : can(regex("^[a-z0-9][a-z0-9+.-]+$", p))])
    error_message = "Each entry must be a Debian package name (lower case letters, digits, '+', '-' and '.')."
  }
}
