# Inputs of the AWS root. Copy terraform.tfvars.example to terraform.tfvars and edit it;
# admin_cidrs is the only one without a default.

variable "name" {
  description = "Name of this deployment: servers are called NAME-1, NAME-2..., and the key pair, VPC and security group are named after it."
  type        = string
  default     = "chatd"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$", var.name))
    error_message = "The name must start with a letter and hold at most 42 of a-z, 0-9 and inner hyphens."
  }
}

variable "server_count" {
  description = "How many chatd servers. One: an instance with an Elastic IP. More: one crowd through a Redis instance, behind an application load balancer."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.server_count >= 1 && var.server_count <= 10 && floor(var.server_count) == var.server_count
    error_message = "server_count must be a whole number from 1 to 10."
  }
}

variable "region" {
  description = "AWS region to deploy to, e.g. eu-central-1."
  type        = string
  default     = "eu-central-1"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-central-1 or us-east-2."
  }
}

variable "availability_zone" {
  description = "Availability zone of the server's subnet. Empty: the region's zone a (e.g. eu-central-1a)."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.availability_zone == "" || can(regex("^${var.region}[a-z]$", var.availability_zone))
    error_message = "availability_zone must be empty or a zone of the region, e.g. eu-central-1b."
  }
}

variable "instance_type" {
  description = "EC2 instance type: t3.small (2 vCPU, 2 GB) suits thousands of chatters. Graviton types (t4g, m7g...) need architecture = \"arm64\" and an aarch64 chatd build."
  type        = string
  default     = "t3.small"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as t3.small."
  }
}

variable "architecture" {
  description = "CPU architecture of the instance type and of the Debian image: x86_64 or arm64."
  type        = string
  default     = "x86_64"
  nullable    = false

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "debian_release" {
  description = "Debian major release of the image (Debian's own AMIs, account 136693071363)."
  type        = number
  default     = 12
  nullable    = false

  validation {
    condition     = var.debian_release >= 12 && floor(var.debian_release) == var.debian_release
    error_message = "debian_release must be 12 or later."
  }
}

variable "root_volume_size" {
  description = "Size of the encrypted root volume in GiB."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024 && floor(var.root_volume_size) == var.root_volume_size
    error_message = "root_volume_size must be a whole number of GiB from 8 to 1024."
  }
}

variable "vpc_cidr" {
  description = "IPv4 range of the VPC made for chatd (the server's subnet is its first /24)."
  type        = string
  default     = "10.42.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && !strcontains(var.vpc_cidr, ":") && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 24, false)
    error_message = "vpc_cidr must be an IPv4 network from /16 to /24, e.g. 10.42.0.0/16."
  }
}

variable "detailed_monitoring" {
  description = "Whether CloudWatch collects instance metrics every minute instead of every five (a small extra charge)."
  type        = bool
  default     = true
  nullable    = false
}

variable "tags" {
  description = "More tags for every resource (app=chatd and deployment=NAME are always set)."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) >= 1 && length(k) <= 128 && length(v) <= 256 && !startswith(lower(k), "aws:")])
    error_message = "Tag keys must be 1 to 128 characters and not start with aws:, values at most 256 characters."
  }
}

variable "ssh_public_key_file" {
  description = "Your SSH public key (one line, OpenSSH format): uploaded as a key pair and authorised for root, which is how Ansible logs in. Not read when ssh_key_name is set."
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
  description = "The name of an EC2 key pair already in the region to use instead of uploading ssh_public_key_file."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = length(var.ssh_key_name) <= 255 && !can(regex("[\\r\\n]", var.ssh_key_name))
    error_message = "ssh_key_name must be empty or one line of at most 255 characters."
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
  description = "DNS name for HTTPS, e.g. chat.example.com. One server: point its A/AAAA records at the server; Caddy gets a certificate. Several: the load balancer gets an ACM certificate (see route53_zone_id). Empty: plain HTTP."
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
  description = "The chatd binary to install, built for the instance (x86_64 Linux, or aarch64 for arm64). Empty: target/release/chatd of this repository (cargo build --release)."
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

variable "availability_zone_b" {
  description = "The second zone a load balancer needs (server_count > 1). Empty: the region's zone b."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.availability_zone_b == "" || can(regex("^${var.region}[a-z]$", var.availability_zone_b))
    error_message = "availability_zone_b must be empty or a zone of the region, e.g. eu-central-1b."
  }
}

variable "redis_instance_type" {
  description = "EC2 instance type of the Redis instance (server_count > 1; also runs Prometheus with monitoring = true)."
  type        = string
  default     = "t3.small"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.redis_instance_type))
    error_message = "redis_instance_type must be an EC2 instance type such as t3.small."
  }
}

variable "route53_zone_id" {
  description = "A Route 53 hosted zone holding the domain (server_count > 1): the certificate's validation record and the domain's alias records are made there. Empty: create the CNAME from the output certificate_validation yourself (apply waits for it) and point the domain at the load balancer."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.route53_zone_id == "" || can(regex("^Z[A-Z0-9]{1,31}$", var.route53_zone_id))
    error_message = "route53_zone_id must be empty or a hosted zone id such as Z0123456789ABCDEFGHIJ."
  }
}

variable "monitoring" {
  description = "Whether the Redis instance also runs Prometheus, scraping every chatd and Redis with alert rules (server_count > 1). Reach it with ssh -L 9090:127.0.0.1:9090 root@REDIS."
  type        = bool
  default     = false
  nullable    = false

  validation {
    condition     = !var.monitoring || var.server_count > 1
    error_message = "monitoring runs on the cluster's Redis instance: it needs server_count > 1."
  }
}
