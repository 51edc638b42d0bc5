# terraform test for the cloud-init module: no provider, runs offline (tests/terraform/run.sh).

variables {
  hostname            = "chatd-1"
  ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzSMqvTQ0hXU5P2RHGpoz4cVdDnVNz3FEBKfpv6J9Kl operator@example"]
}

run "defaults" {
  command = plan

  assert {
    condition     = startswith(output.user_data, "#cloud-config\n")
    error_message = "cloud-init only reads user data as cloud-config when the first line is #cloud-config"
  }

  assert {
    condition     = yamldecode(output.user_data).hostname == "chatd-1"
    error_message = "the host name must be set"
  }

  assert {
    condition     = yamldecode(output.user_data).disable_root == false && yamldecode(output.user_data).ssh_pwauth == false
    error_message = "root must be reachable with the key (Ansible's user) and password logins off"
  }

  assert {
    condition     = tolist(yamldecode(output.user_data).ssh_authorized_keys) == var.ssh_authorized_keys
    error_message = "the operator's key must be authorised"
  }

  assert {
    condition     = output.packages == tolist(["python3", "unattended-upgrades"])
    error_message = "python3 (for Ansible) and unattended-upgrades are installed by default"
  }

  assert {
    condition     = yamldecode(output.user_data).package_upgrade == true
    error_message = "first boot upgrades packages by default"
  }

  assert {
    condition = strcontains(
      one([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/etc/apt/apt.conf.d/20auto-upgrades"]),
      "APT::Periodic::Unattended-Upgrade \"1\";"
    )
    error_message = "unattended upgrades must be switched on"
  }
}

run "no_unattended_upgrades_and_extra_packages" {
  command = plan

  variables {
    unattended_upgrades = false
    upgrade_packages    = false
    extra_packages      = ["htop", "python3"]
  }

  assert {
    condition     = output.packages == tolist(["python3", "htop"])
    error_message = "extra packages are added once each, unattended-upgrades left out"
  }

  assert {
    condition     = length(yamldecode(output.user_data).write_files) == 0 && yamldecode(output.user_data).package_upgrade == false
    error_message = "no apt periodic file and no upgrade when both are off"
  }
}

run "yaml_cannot_be_injected" {
  command = plan

  variables {
    ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzSMqvTQ0hXU5P2RHGpoz4cVdDnVNz3FEBKfpv6J9Kl a: b # \"c\""]
  }

  assert {
    condition     = yamldecode(output.user_data).ssh_authorized_keys[0] == var.ssh_authorized_keys[0]
    error_message = "a comment with YAML syntax in it must come back unchanged"
  }
}

run "rejects_bad_hostname" {
  command = plan

  variables {
    hostname = "Chat_D"
  }

  expect_failures = [var.hostname]
}

run "rejects_private_key_and_empty_list" {
  command = plan

  variables {
    ssh_authorized_keys = ["-----BEGIN OPENSSH PRIVATE KEY-----"]
  }

  expect_failures = [var.ssh_authorized_keys]
}

run "rejects_no_key" {
  command = plan

  variables {
    ssh_authorized_keys = []
  }

  expect_failures = [var.ssh_authorized_keys]
}

run "rejects_bad_package_name" {
  command = plan

  variables {
    extra_packages = ["htop; rm -rf /"]
  }

  expect_failures = [var.extra_packages]
}
