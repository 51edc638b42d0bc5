terraform {
  # 1.9: validation blocks may refer to other variables (monitoring vs. server_count).
  required_version = "~> 1.9"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.10 added aws_instance.primary_network_interface, used to boot on a prepared interface.
      version = "~> 6.10"
    }
  }
}
