variable "name" {
  description = "Name of the deployment: chatd servers are NAME-1, NAME-2..., the Redis server NAME-redis."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$", var.name))
    error_message = "The name must start with a letter and hold at most 42 of a-z, 0-9 and inner hyphens."
  }
}

variable "server_count" {
  description = "How many chatd servers: more than one makes a cluster (private network, Redis, load balancer)."
  type        = number
  nullable    = false

  validation {
    condition     = var.server_count >= 1 && var.server_count <= 10 && floor(var.server_count) == var.server_count
    error_message = "server_count must be a whole number from 1 to 10."
  }
}

variable "private_cidr" {
  description = "The servers' subnet on the private network (IPv4, /24 or larger): Redis gets its .2, the chatd servers .10 onwards, the load balancer the last usable address."
  type        = string
  default     = "10.0.1.0/24"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.private_cidr, 0)) && !strcontains(var.private_cidr, ":") && try(tonumber(split("/", var.private_cidr)[1]) <= 24, false)
    error_message = "private_cidr must be an IPv4 network of /24 or larger, e.g. 10.0.1.0/24."
  }
}

variable "domain" {
  description = "Public DNS name for HTTPS, or empty. On a cluster the load balancer terminates TLS, so the hosts get no chatd_domain but accept the origin https://DOMAIN."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.domain))
    error_message = "The domain must be empty or a lower-case DNS name such as chat.example.com."
  }
}

variable "chatd_settings" {
  description = "The operator's chatd role variables; on a cluster chatd_trusted_proxies and chatd_allowed_origins are added unless set here."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k in keys(var.chatd_settings) : can(regex("^chatd_[a-z0-9_]+$", k))])
    error_message = "Setting names must be chatd role variables (chatd_ followed by lower-case letters, digits, '_')."
  }
}

variable "proxy_cidrs" {
  description = "Where the load balancer's requests come from, as chatd sees them (its trusted_proxies). Empty: the load balancer's own private address (lb_private_ip)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for c in var.proxy_cidrs : can(cidrhost(c, 0))])
    error_message = "Each entry must be a network in CIDR notation, e.g. 10.0.1.0/24."
  }
}

variable "monitoring" {
  description = "Whether the Redis server also runs Prometheus (role prometheus), scraping every chatd and Redis. Needs a cluster (server_count > 1)."
  type        = bool
  default     = false
  nullable    = false

  validation {
    condition     = !var.monitoring || var.server_count > 1
    error_message = "monitoring runs on the cluster's Redis server: it needs server_count > 1."
  }
}

variable "redis_host" {
  description = "Host number of the Redis server in private_cidr (2: .2). AWS reserves the first four addresses of a subnet: 4 or more there."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.redis_host >= 1 && var.redis_host <= 9 && floor(var.redis_host) == var.redis_host
    error_message = "redis_host must be a whole number from 1 to 9 (the chatd servers start at 10)."
  }
}
