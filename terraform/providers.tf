# The API token comes from the environment, never from a file in the repository:
#   export HCLOUD_TOKEN=...   (Hetzner Cloud Console > project > Security > API tokens, read & write)
provider "hcloud" {}
