# Credentials come from the environment or your AWS config, never from a file in the repository:
#   export AWS_PROFILE=...   or   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN)
provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
