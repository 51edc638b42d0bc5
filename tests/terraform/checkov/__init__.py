# Makes this folder loadable by checkov --external-checks-dir (it skips folders without one).
