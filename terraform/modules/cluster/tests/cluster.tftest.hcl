# terraform test for the deployment's shape: no provider, runs offline (tests/terraform/run.sh).

variables {
  name = "chat"
}

run "one_server" {
  command = plan

  variables {
    server_count   = 1
    domain         = "chat.example.com"
    chatd_settings = { chatd_log_level = "debug" }
  }

  assert {
    condition = (
      output.cluster == false && jsonencode(output.server_names) == jsonencode(["chat-1"]) && length(output.chatd_private_ips) == 0 &&
      output.redis_name == null && output.redis_private_ip == null && output.lb_private_ip == null
    )
    error_message = "one server: no private addresses, no Redis, no load balancer"
  }

  assert {
    condition     = jsonencode(output.chatd_settings) == jsonencode({ chatd_log_level = "debug" }) && output.inventory_domain == "chat.example.com"
    error_message = "one server: the settings unchanged, and the domain for Caddy on the host"
  }

  assert {
    condition     = jsonencode(output.public_tcp_ports) == "[80,443]" && length(output.prometheus_hosts) == 0
    error_message = "one server: 80 and 443 open to everyone, no Prometheus"
  }
}

run "cluster" {
  command = plan

  variables {
    server_count = 3
    domain       = "chat.example.com"
    monitoring   = true
  }

  assert {
    condition = (
      output.cluster && jsonencode(output.server_names) == jsonencode(["chat-1", "chat-2", "chat-3"]) &&
      jsonencode(output.chatd_private_ips) == jsonencode({ "chat-1" = "10.0.1.10", "chat-2" = "10.0.1.11", "chat-3" = "10.0.1.12" })
    )
    error_message = "three chatd servers on .10, .11, .12"
  }

  assert {
    condition     = output.redis_name == "chat-redis" && output.redis_private_ip == "10.0.1.2" && output.lb_private_ip == "10.0.1.254"
    error_message = "Redis on .2, the load balancer on .254"
  }

  assert {
    condition = jsonencode(output.chatd_settings) == jsonencode({
      chatd_trusted_proxies = "[\"10.0.1.254\"]"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
    })
    error_message = "the load balancer is a trusted proxy and the domain an allowed origin"
  }

  assert {
    condition     = output.inventory_domain == "" && length(output.public_tcp_ports) == 0 && jsonencode(output.prometheus_hosts) == jsonencode(["chat-redis"])
    error_message = "TLS at the load balancer, no public web port on the hosts, Prometheus on the Redis server"
  }
}

run "operator_settings_win_and_proxy_networks" {
  command = plan

  variables {
    server_count = 2
    private_cidr = "10.20.0.0/16"
    proxy_cidrs  = ["10.20.0.0/24", "10.20.1.0/24"]
    redis_host   = 5
    chatd_settings = {
      chatd_allowed_origins = "[\"https://other.example\"]"
    }
    domain = "chat.example.com"
  }

  assert {
    condition = jsonencode(output.chatd_settings) == jsonencode({
      chatd_trusted_proxies = "[\"10.20.0.0/24\",\"10.20.1.0/24\"]"
      chatd_allowed_origins = "[\"https://other.example\"]"
    })
    error_message = "proxy_cidrs are the trusted proxies; the operator's allowed origins are kept"
  }

  assert {
    condition     = output.lb_private_ip == "10.20.255.254" && output.redis_private_ip == "10.20.0.5"
    error_message = "addresses follow private_cidr and redis_host"
  }
}

run "monitoring_needs_a_cluster" {
  command = plan

  variables {
    server_count = 1
    monitoring   = true
  }

  expect_failures = [var.monitoring]
}

run "rejects_a_small_subnet" {
  command = plan

  variables {
    server_count = 2
    private_cidr = "10.0.1.0/28"
  }

  expect_failures = [var.private_cidr]
}
