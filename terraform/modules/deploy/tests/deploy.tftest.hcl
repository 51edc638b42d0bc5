# terraform test for the deploy module: no provider, runs offline. Applies for real, so the
# local-exec runs run-playbook.sh, with a fake ansible-playbook that records each call.
# Run it through tests/terraform/run.sh, which makes a scratch folder and passes
#   -var work_dir=... -var playbook=.../site.yml -var ansible_playbook_command=.../fake-ansible-playbook
#   -var 'required_files=[".../chatd"]'
# and afterwards checks calls.log, the inventories and known_hosts (the assertions below too).

variables {
  servers = {
    "chatd-1" = { id = "101", ipv4 = "203.0.113.10", ipv6 = "2001:db8::1" }
  }
}

run "renders_without_running" {
  command = plan

  variables {
    run_ansible = false
  }

  assert {
    condition     = output.urls == tolist(["http://203.0.113.10/", "http://[2001:db8::1]/"])
    error_message = "plain HTTP on both addresses without a domain"
  }

  assert {
    condition     = output.url == "http://203.0.113.10/"
    error_message = "the IPv4 URL first"
  }

  assert {
    condition     = output.ipv4_addresses == tomap({ "chatd-1" = "203.0.113.10" }) && output.ipv6_addresses == tomap({ "chatd-1" = "2001:db8::1" })
    error_message = "addresses by server name"
  }

  assert {
    condition     = strcontains(output.inventory, "\n[chatd]\nchatd-1 ansible_host=203.0.113.10 ansible_user=root\n")
    error_message = "the inventory puts the server in [chatd] with its IPv4 address"
  }

  assert {
    condition     = length(terraform_data.playbook) == 0
    error_message = "no playbook run when run_ansible is off"
  }
}

run "urls_follow_domain_and_listen_port" {
  command = plan

  variables {
    run_ansible = false
    servers = {
      "chatd-1" = { id = "1", ipv4 = "203.0.113.10" }
      "chatd-2" = { id = "2", ipv4 = "203.0.113.11" }
    }
    chatd_settings = { chatd_listen = "0.0.0.0:8080" }
  }

  assert {
    condition     = output.urls == tolist(["http://203.0.113.10:8080/", "http://203.0.113.11:8080/"])
    error_message = "one URL per server, on chatd_listen's port, no IPv6 URL without an IPv6 address"
  }
}

run "https_with_domain" {
  command = plan

  variables {
    run_ansible = false
    domain      = "chat.example.com"
  }

  assert {
    condition     = output.urls == tolist(["https://chat.example.com/"]) && output.url == "https://chat.example.com/"
    error_message = "with a domain, the one URL is https://DOMAIN/"
  }

  assert {
    condition     = strcontains(output.inventory, "\nchatd_domain=chat.example.com\n")
    error_message = "the domain reaches the role as chatd_domain"
  }
}

run "first_apply_runs_playbook" {
  variables {
    chatd_settings = {
      chatd_log_level       = "info"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
  }

  assert {
    condition     = length(terraform_data.playbook) == 1 && output.playbook_run != null
    error_message = "the playbook ran"
  }

  assert {
    condition     = length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 1
    error_message = "exactly one ansible-playbook call after the first apply"
  }

  assert {
    condition     = file("${var.work_dir}/inventory.ini") == output.inventory
    error_message = "the inventory file holds the rendered inventory"
  }
}

run "same_settings_do_not_rerun" {
  variables {
    chatd_settings = {
      chatd_log_level       = "info"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
  }

  assert {
    condition     = output.playbook_run == run.first_apply_runs_playbook.playbook_run
    error_message = "nothing changed, so terraform_data must not be replaced"
  }

  assert {
    condition     = length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 1
    error_message = "no second call when nothing changed"
  }
}

run "changed_setting_reruns" {
  variables {
    chatd_settings = {
      chatd_log_level       = "debug"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
  }

  assert {
    condition     = output.playbook_run != run.first_apply_runs_playbook.playbook_run
    error_message = "a changed setting replaces terraform_data"
  }

  assert {
    condition     = length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 2
    error_message = "a changed setting runs the playbook again"
  }

  assert {
    condition     = strcontains(file("${var.work_dir}/inventory.ini"), "\nchatd_log_level=debug\n")
    error_message = "the new value is in the inventory the playbook ran with"
  }
}

run "replaced_server_reruns" {
  variables {
    chatd_settings = {
      chatd_log_level       = "debug"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
    servers = {
      "chatd-1" = { id = "102", ipv4 = "203.0.113.10", ipv6 = "2001:db8::1" }
    }
  }

  assert {
    condition     = length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 3
    error_message = "a new server id (same address) runs the playbook again"
  }
}

run "changed_watched_file_reruns" {
  variables {
    chatd_settings = {
      chatd_log_level       = "debug"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
    trigger_files = [abspath("main.tf")]
    servers = {
      "chatd-1" = { id = "102", ipv4 = "203.0.113.10", ipv6 = "2001:db8::1" }
    }
  }

  assert {
    condition     = length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 4
    error_message = "a change to a watched file (here: a file newly watched) runs the playbook again"
  }
}

run "switched_off" {
  variables {
    chatd_settings = {
      chatd_log_level       = "debug"
      chatd_max_connections = "20000"
      chatd_rate_per_second = "5.0"
      chatd_allowed_origins = "[\"https://chat.example.com\"]"
      chatd_sysctl          = "false"
    }
    run_ansible = false
    servers = {
      "chatd-1" = { id = "102", ipv4 = "203.0.113.10", ipv6 = "2001:db8::1" }
    }
  }

  assert {
    condition     = output.playbook_run == null && length(split("\n", trimspace(file("${var.work_dir}/calls.log")))) == 4
    error_message = "run_ansible = false runs nothing"
  }
}

run "missing_playbook_fails_at_plan" {
  command = plan

  variables {
    playbook = "/nonexistent/ansible/site.yml"
  }

  expect_failures = [terraform_data.playbook]
}

run "missing_binary_fails_at_plan" {
  command = plan

  variables {
    required_files = ["/nonexistent/target/release/chatd"]
  }

  expect_failures = [terraform_data.playbook]
}

run "rejects_relative_playbook" {
  command = plan

  variables {
    playbook = "../ansible/site.yml"
  }

  expect_failures = [var.playbook]
}

run "rejects_command_with_arguments" {
  command = plan

  variables {
    ansible_playbook_command = "ansible-playbook --check"
  }

  expect_failures = [var.ansible_playbook_command]
}

run "cluster_behind_a_load_balancer" {
  command = plan

  variables {
    run_ansible  = false
    domain       = "chat.example.com"
    tls_on_hosts = false
    servers = {
      "chatd-1" = { id = "101", ipv4 = "203.0.113.10" }
      "chatd-2" = { id = "102", ipv4 = "203.0.113.11" }
    }
    private_addresses    = { "chatd-1" = "10.0.1.10", "chatd-2" = "10.0.1.11" }
    redis_servers        = { "chatd-redis" = { id = "103", ipv4 = "203.0.113.20", private_ip = "10.0.1.2" } }
    prometheus_hosts     = ["chatd-redis"]
    load_balancer        = { host = "198.51.100.1", ipv6 = "2001:db8::100" }
    ssh_private_key_file = "/home/me/.ssh/id_ed25519"
  }

  assert {
    condition     = output.url == "https://chat.example.com/"
    error_message = "with a domain the URL is https://DOMAIN/ (the load balancer's certificate)"
  }

  assert {
    condition = alltrue([for line in [
      "\nchatd-1 ansible_host=203.0.113.10 ansible_user=root private_address=10.0.1.10\n",
      "\n[redis]\nchatd-redis ansible_host=203.0.113.20 ansible_user=root private_address=10.0.1.2\n",
      "\n[prometheus]\nchatd-redis\n",
      "\nansible_ssh_private_key_file=/home/me/.ssh/id_ed25519\n",
      "\nchatd_domain=\n",
    ] : strcontains(output.inventory, line)])
    error_message = "the inventory has the private addresses, [redis], [prometheus], the key, and no chatd_domain (TLS at the load balancer)"
  }
}

run "load_balancer_without_domain" {
  command = plan

  variables {
    run_ansible   = false
    load_balancer = { host = "198.51.100.1", ipv6 = "2001:db8::100" }
  }

  assert {
    condition     = output.urls == tolist(["http://198.51.100.1/", "http://[2001:db8::100]/"])
    error_message = "without a domain, the load balancer's addresses"
  }
}
