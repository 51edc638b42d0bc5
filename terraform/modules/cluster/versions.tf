terraform {
  # 1.9: validation blocks may refer to other variables; terraform test (1.6+) runs offline here.
  required_version = "~> 1.9"
}
