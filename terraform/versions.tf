terraform {
  # 1.9: validation blocks may refer to other variables (monitoring vs. server_count).
  required_version = "~> 1.9"

  required_providers {
    hcloud = {
      source  = "hetznercloud/hcloud"
      version = "~> 1.58"
    }
  }
}
