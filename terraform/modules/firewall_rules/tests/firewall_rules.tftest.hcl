# terraform test for the firewall rule set: no provider, runs offline (tests/terraform/run.sh).

variables {
  admin_cidrs = ["203.0.113.7/32", "2001:DB8:1::/48"]
}

run "defaults" {
  command = plan

  assert {
    condition     = [for r in output.ingress_rules : r.key] == ["ssh", "tcp-80", "tcp-443", "icmp"]
    error_message = "SSH, HTTP, HTTPS and ICMP, in that order"
  }

  assert {
    condition     = output.ingress_rules[0].port == 22 && output.ingress_rules[0].protocol == "tcp"
    error_message = "SSH is tcp/22"
  }

  assert {
    condition     = output.ingress_rules[0].cidrs == tolist(["203.0.113.7/32", "2001:db8:1::/48"])
    error_message = "SSH only from the admin networks (IPv6 written in lower case, as the clouds return it)"
  }

  assert {
    condition     = alltrue([for r in output.ingress_rules : r.cidrs == tolist(["0.0.0.0/0", "::/0"]) if r.key != "ssh"])
    error_message = "80, 443 and ICMP from anywhere, IPv4 and IPv6"
  }

  assert {
    condition     = output.ingress_rules[1].port == 80 && output.ingress_rules[2].port == 443 && output.ingress_rules[3].port == null
    error_message = "ports 80 and 443; ICMP has no port"
  }

  assert {
    condition = keys(output.ingress_by_cidr) == [
      "icmp 0.0.0.0/0", "icmp ::/0", "ssh 2001:db8:1::/48", "ssh 203.0.113.7/32",
      "tcp-443 0.0.0.0/0", "tcp-443 ::/0", "tcp-80 0.0.0.0/0", "tcp-80 ::/0",
    ]
    error_message = "one entry per rule and network"
  }

  assert {
    condition     = output.ingress_by_cidr["ssh 2001:db8:1::/48"].ipv6 && !output.ingress_by_cidr["ssh 203.0.113.7/32"].ipv6
    error_message = "each entry knows its address family"
  }
}

run "custom_ports_no_icmp" {
  command = plan

  variables {
    admin_cidrs      = ["198.51.100.0/24"]
    ssh_port         = 2222
    public_tcp_ports = [443]
    allow_icmp       = false
  }

  assert {
    condition     = [for r in output.ingress_rules : "${r.key}:${r.port}"] == ["ssh:2222", "tcp-443:443"]
    error_message = "only the configured ports"
  }

  assert {
    condition     = length(output.ingress_rules[0].ipv6_cidrs) == 0
    error_message = "no IPv6 SSH rule source when no IPv6 admin network is given"
  }
}

run "rejects_ssh_from_everywhere" {
  command = plan

  variables {
    admin_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.admin_cidrs]
}

run "rejects_ipv6_everywhere" {
  command = plan

  variables {
    admin_cidrs = ["::/0"]
  }

  expect_failures = [var.admin_cidrs]
}

run "rejects_host_bits" {
  command = plan

  variables {
    admin_cidrs = ["203.0.113.7/24"]
  }

  expect_failures = [var.admin_cidrs]
}

run "rejects_address_without_prefix" {
  command = plan

  variables {
    admin_cidrs = ["203.0.113.7"]
  }

  expect_failures = [var.admin_cidrs]
}

run "rejects_empty_admin_list" {
  command = plan

  variables {
    admin_cidrs = []
  }

  expect_failures = [var.admin_cidrs]
}

run "rejects_ssh_port_in_public_ports" {
  command = plan

  variables {
    public_tcp_ports = [22, 80]
  }

  expect_failures = [var.public_tcp_ports]
}

run "rejects_bad_port" {
  command = plan

  variables {
    ssh_port = 70000
  }

  expect_failures = [var.ssh_port]
}
