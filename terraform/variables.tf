# Inputs of the Hetzner Cloud root. Copy terraform.tfvars.example to terraform.tfvars and edit it;
# admin_cidrs is the only one without a default.

variable "name" {
  description = "Name of this deployment: servers are called NAME-1, NAME-2..., and the SSH key and firewall are named after it."
  type        = string
  default     = "chatd"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$", var.name))
    error_message = "The name must start with a letter and hold at most 42 of a-z, 0-9 and inner hyphens."
  }
}

variable "server_count" {
  description = "How many chatd servers. One: a server with a stable address. More: one crowd through a Redis server on a private network, behind a load balancer."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.server_count >= 1 && var.server_count <= 10 && floor(var.server_count) == var.server_count
    error_message = "server_count must be a whole number from 1 to 10."
  }
}

variable "server_type" {
  description = "Hetzner Cloud server type: cx23 (2 shared vCPU, 4 GB, EU locations) suits thousands of chatters; cpx* types also run in ash/hil, cax* are Arm (build chatd for aarch64 then)."
  type        = string
  default     = "cx23"
  nullable    = false

  validation {
    condition     = can(regex("^(cx|cpx|cax|ccx)[0-9]{2}$", var.server_type))
    error_message = "server_type must be a Hetzner Cloud server type such as cx23, cpx22, cax11 or ccx13."
  }
}

variable "location" {
  description = "Hetzner Cloud location: fsn1 (Falkenstein), nbg1 (Nuremberg), hel1 (Helsinki), ash (Ashburn), hil (Hillsboro) or sin (Singapore)."
  type        = string
  default     = "fsn1"
  nullable    = false

  validation {
    condition     = contains(["fsn1", "nbg1", "hel1", "ash", "hil", "sin"], var.location)
    error_message = "location must be one of fsn1, nbg1, hel1, ash, hil, sin."
  }
}

variable "image" {
  description = "Operating system image; the Ansible role supports Debian 12 (bookworm) and later."
  type        = string
  default     = "debian-12"
  nullable    = false

  validation {
    condition     = can(regex("^debian-1[2-9]$", var.image))
    error_message = "image must be a Debian image name, debian-12 or later."
  }
}

variable "ssh_public_key_file" {
  description = "Your SSH public key (one line, OpenSSH format): uploaded to Hetzner and authorised for root, which is how Ansible logs in. Not read when ssh_key_name is set."
  type        = string
  default     = "~/.ssh/id_ed25519.pub"
  nullable    = false

  # A missing file is reported where the key is needed (it is not, with ssh_key_name).
  validation {
    condition     = !fileexists(pathexpand(var.ssh_public_key_file)) || can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\\.com|sk-ecdsa-sha2-nistp256@openssh\\.com) [A-Za-z0-9+/]+={0,3}( [^\\r\\n]*)?$", trimspace(file(pathexpand(var.ssh_public_key_file)))))
    error_message = "ssh_public_key_file must name an OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub; create one with ssh-keygen -t ed25519)."
  }
}

variable "ssh_key_name" {
  description = "The name of an SSH key already in the Hetzner project to use instead of uploading ssh_public_key_file (Hetzner refuses the same key twice)."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = length(var.ssh_key_name) <= 128 && !can(regex("[\\r\\n]", var.ssh_key_name))
    error_message = "ssh_key_name must be empty or one line of at most 128 characters."
  }
}

variable "ssh_private_key_file" {
  description = "The private key Ansible logs in with, written to the inventory. Empty: ssh_public_key_file without .pub (with ssh_key_name: ssh's defaults and agent)."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = !can(regex("\\s", var.ssh_private_key_file)) && !endswith(var.ssh_private_key_file, ".pub")
    error_message = "ssh_private_key_file must be a path without white space, to the private key (not the .pub file)."
  }
}

variable "admin_cidrs" {
  description = "Networks allowed to reach SSH, in CIDR notation, e.g. [\"203.0.113.7/32\"]: the address you run terraform and Ansible from."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "admin_cidrs must list at least one network in CIDR notation, e.g. [\"203.0.113.7/32\"]."
  }

  # try(): before Terraform 1.12 `||` does not short-circuit; an entry that is no CIDR is reported above.
  validation {
    condition     = alltrue([for c in var.admin_cidrs : try(tonumber(split("/", c)[1]) > 0, true)])
    error_message = "SSH is not opened to the whole internet (0.0.0.0/0 or ::/0): list the networks you administer from."
  }
}

variable "domain" {
  description = "DNS name for HTTPS, e.g. chat.example.com. One server: point its A/AAAA records at the server; Caddy gets a certificate. Several: point them at the load balancer, which gets a managed certificate (the zone must be in Hetzner DNS). Empty: plain HTTP."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.domain))
    error_message = "domain must be empty or a lower-case DNS name such as chat.example.com (no scheme, no port, no trailing dot)."
  }

}

variable "chatd_settings" {
  description = "chatd role variables (see ansible/roles/chatd/defaults/main.yml), e.g. { chatd_log_level = \"debug\" }. Change one and run terraform apply: the playbook runs again and chatd reloads."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k in keys(var.chatd_settings) : can(regex("^chatd_[a-z0-9_]+$", k))])
    error_message = "chatd_settings keys must be chatd role variables: chatd_ followed by lower-case letters, digits and underscores."
  }

  validation {
    condition     = length(setintersection(keys(var.chatd_settings), ["chatd_domain", "chatd_binary_src"])) == 0
    error_message = "Set the domain and the binary with the domain and chatd_binary variables, not in chatd_settings."
  }

  validation {
    condition     = alltrue([for v in values(var.chatd_settings) : !can(regex("[\\r\\n]", v))])
    error_message = "chatd_settings values must be single lines."
  }
}

variable "chatd_binary" {
  description = "The chatd binary to install, built for the server (x86_64 Linux for cx/cpx/ccx). Empty: target/release/chatd of this repository (cargo build --release)."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.chatd_binary == "" || !can(regex("[\\r\\n]", var.chatd_binary))
    error_message = "chatd_binary must be empty or a path."
  }
}

variable "run_ansible" {
  description = "Whether terraform apply runs ansible/site.yml on the servers (needs ansible-playbook here). false: create the servers only; the inventory is in the outputs."
  type        = bool
  default     = true
  nullable    = false
}

variable "ansible_playbook" {
  description = "The playbook to run. Empty: ansible/site.yml of this repository."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.ansible_playbook == "" || can(regex("\\.ya?ml$", var.ansible_playbook))
    error_message = "ansible_playbook must be empty or a path to a .yml or .yaml file."
  }
}

variable "ansible_extra_args" {
  description = "More arguments for ansible-playbook, one per entry, e.g. [\"--diff\"]."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.ansible_extra_args : !can(regex("[\\r\\n]", a))])
    error_message = "An argument cannot contain a line break."
  }
}

variable "unattended_upgrades" {
  description = "Whether the servers install Debian security updates daily by themselves (unattended-upgrades)."
  type        = bool
  default     = true
  nullable    = false
}

variable "backups" {
  description = "Whether Hetzner keeps daily backups of the servers (20% of the server price). chatd keeps no data, so off by default."
  type        = bool
  default     = false
  nullable    = false
}

variable "labels" {
  description = "More Hetzner labels for every resource (app=chatd and deployment=NAME are always set)."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for k, v in var.labels :
      can(regex("^([a-z0-9]([a-z0-9.-]*[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", k)) &&
      can(regex("^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$", v))
    ])
    error_message = "Labels must follow Hetzner's rules: keys and values of at most 63 of A-Z, a-z, 0-9, '.', '_', '-', starting and ending alphanumeric."
  }
}

variable "redis_server_type" {
  description = "Hetzner Cloud server type of the Redis server (server_count > 1; also runs Prometheus with monitoring = true)."
  type        = string
  default     = "cx23"
  nullable    = false

  validation {
    condition     = can(regex("^(cx|cpx|cax|ccx)[0-9]{2}$", var.redis_server_type))
    error_message = "redis_server_type must be a Hetzner Cloud server type such as cx23."
  }
}

variable "load_balancer_type" {
  description = "Hetzner load balancer type in front of the chatd servers (server_count > 1): lb11 holds 10,000 connections, lb21 20,000, lb31 40,000."
  type        = string
  default     = "lb11"
  nullable    = false

  validation {
    condition     = contains(["lb11", "lb21", "lb31"], var.load_balancer_type)
    error_message = "load_balancer_type must be lb11, lb21 or lb31."
  }
}

variable "private_network_cidr" {
  description = "The private network (server_count > 1): its second /24 holds Redis (.2), the chatd servers (.10 on) and the load balancer (.254)."
  type        = string
  default     = "10.0.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.private_network_cidr, 0)) && !strcontains(var.private_network_cidr, ":") && try(tonumber(split("/", var.private_network_cidr)[1]) <= 23, false)
    error_message = "private_network_cidr must be an IPv4 network of /23 or larger in a private range, e.g. 10.0.0.0/16."
  }
}

variable "monitoring" {
  description = "Whether the Redis server also runs Prometheus, scraping every chatd and Redis with alert rules (server_count > 1). Reach it with ssh -L 9090:127.0.0.1:9090 root@REDIS."
  type        = bool
  default     = false
  nullable    = false

  validation {
    condition     = !var.monitoring || var.server_count > 1
    error_message = "monitoring runs on the cluster's Redis server: it needs server_count > 1."
  }
}
