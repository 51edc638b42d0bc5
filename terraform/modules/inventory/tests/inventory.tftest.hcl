# terraform test for the inventory renderer: no provider, runs offline (tests/terraform/run.sh).
# tests/terraform/run.sh also parses what this module renders with ansible-inventory.

variables {
  hosts = {
    "chatd-2" = "198.51.100.20"
    "chatd-1" = "203.0.113.10"
  }
}

run "plain_http" {
  command = plan

  assert {
    condition     = output.content == <<-EOT
      # Ansible inventory for chatd, rendered by Terraform (terraform/modules/inventory).
      # Do not edit it: change the Terraform variables and run `terraform apply` again.
      # Ansible reads each value in [chatd:vars] as a Python literal where it is one (20000 is a number,
      # ["a", "b"] a list, True a boolean; Terraform's true/false are written True/False), else as text.
      [chatd]
      chatd-1 ansible_host=203.0.113.10 ansible_user=root
      chatd-2 ansible_host=198.51.100.20 ansible_user=root

      [chatd:vars]
      chatd_domain=
    EOT
    error_message = "hosts sorted by name in [chatd], an empty chatd_domain and nothing else"
  }
}

run "domain_and_settings" {
  command = plan

  variables {
    hosts        = { "chatd-1" = "2001:db8::1" }
    ansible_user = "admin"
    domain       = "chat.example.com"
    settings = {
      chatd_log_level       = "debug"
      chatd_max_connections = "20000"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_metrics_public  = "false"
      chatd_reuse_port      = "true"
    }
  }

  assert {
    condition     = output.content == <<-EOT
      # Ansible inventory for chatd, rendered by Terraform (terraform/modules/inventory).
      # Do not edit it: change the Terraform variables and run `terraform apply` again.
      # Ansible reads each value in [chatd:vars] as a Python literal where it is one (20000 is a number,
      # ["a", "b"] a list, True a boolean; Terraform's true/false are written True/False), else as text.
      [chatd]
      chatd-1 ansible_host=2001:db8::1 ansible_user=admin

      [chatd:vars]
      chatd_domain=chat.example.com
      chatd_allowed_origins=["https://chat.example.com"]
      chatd_log_level=debug
      chatd_max_connections=20000
      chatd_metrics_public=False
      chatd_reuse_port=True
    EOT
    error_message = "the domain and every setting, sorted by name, in [chatd:vars]; true/false as Python booleans"
  }
}

run "rejects_no_host" {
  command = plan

  variables {
    hosts = {}
  }

  expect_failures = [var.hosts]
}

run "rejects_bad_address" {
  command = plan

  variables {
    hosts = { "chatd-1" = "203.0.113.10/32" }
  }

  expect_failures = [var.hosts]
}

run "rejects_bad_host_name" {
  command = plan

  variables {
    hosts = { "chatd 1" = "203.0.113.10" }
  }

  expect_failures = [var.hosts]
}

run "rejects_setting_that_is_not_a_role_variable" {
  command = plan

  variables {
    settings = { ansible_become = "true" }
  }

  expect_failures = [var.settings]
}

run "rejects_domain_in_settings" {
  command = plan

  variables {
    settings = { chatd_domain = "chat.example.com" }
  }

  expect_failures = [var.settings]
}

run "rejects_multi_line_value" {
  command = plan

  variables {
    settings = { chatd_log_level = "info\n[all:vars]\nansible_python_interpreter=/tmp/x" }
  }

  expect_failures = [var.settings]
}

run "rejects_domain_with_scheme" {
  command = plan

  variables {
    domain = "https://chat.example.com/"
  }

  expect_failures = [var.domain]
}

run "cluster" {
  command = plan

  variables {
    hosts             = { "chatd-1" = "203.0.113.10", "chatd-2" = "203.0.113.11" }
    private_addresses = { "chatd-1" = "10.0.1.10", "chatd-2" = "10.0.1.11" }
    redis_hosts = {
      "chatd-redis" = { address = "203.0.113.20", private_address = "10.0.1.2" }
    }
    prometheus_hosts     = ["chatd-redis"]
    ssh_private_key_file = "/home/me/.ssh/id_ed25519"
    settings = {
      chatd_trusted_proxies = "[\"10.0.1.254\"]"
    }
  }

  assert {
    condition     = output.content == <<-EOT
      # Ansible inventory for chatd, rendered by Terraform (terraform/modules/inventory).
      # Do not edit it: change the Terraform variables and run `terraform apply` again.
      # Ansible reads each value in [chatd:vars] as a Python literal where it is one (20000 is a number,
      # ["a", "b"] a list, True a boolean; Terraform's true/false are written True/False), else as text.
      [chatd]
      chatd-1 ansible_host=203.0.113.10 ansible_user=root private_address=10.0.1.10
      chatd-2 ansible_host=203.0.113.11 ansible_user=root private_address=10.0.1.11

      # The cluster's Redis (role redis): chatd joins it at its private_address.
      [redis]
      chatd-redis ansible_host=203.0.113.20 ansible_user=root private_address=10.0.1.2

      # Prometheus (role prometheus), scraping every chatd and Redis on the private network.
      [prometheus]
      chatd-redis

      [all:vars]
      ansible_ssh_private_key_file=/home/me/.ssh/id_ed25519

      [chatd:vars]
      chatd_domain=
      chatd_trusted_proxies=["10.0.1.254"]
    EOT
    error_message = "a cluster: private addresses, [redis], [prometheus] and the SSH key"
  }
}

run "prometheus_host_must_exist" {
  command = plan

  variables {
    prometheus_hosts = ["nowhere"]
  }

  expect_failures = [var.prometheus_hosts]
}
