"""Static checks of the Ansible roles' variables (run by tests/ansible/run.sh).

For every role (chatd, redis, prometheus), with its name as the prefix:
- every variable in defaults/main.yml starts with ROLE_ and is in meta/argument_specs.yml, and
  the other way round;
- every option in the spec has a type and a description, and a default equal to the one in
  defaults/main.yml unless that default is a template (then the spec has none);
- every ROLE_ name used in the role's tasks, handlers, templates and vars is defined in
  defaults/main.yml (a typo would otherwise surface only on a host);
and for chatd:
- the template renders every key of config/chatd.toml (the daemon's documented keys) and every
  field of FileConfig/FileChatConfig in src/config.rs.
"""

import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2]
errors = []
counts = {}

for role_name in ("chatd", "redis", "prometheus"):
    role = root / "ansible" / "roles" / role_name
    prefix = role_name + "_"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    counts[role_name] = len(defaults)
    for name in defaults:
        if not name.startswith(prefix):
            errors.append(f"{role_name}/defaults/main.yml: {name} is not prefixed {prefix}")
        if name not in spec:
            errors.append(f"{role_name}/meta/argument_specs.yml: {name} is missing")
    for name, opt in spec.items():
        if name not in defaults:
            errors.append(f"{role_name}/defaults/main.yml: {name} (in argument_specs.yml) has no default")
            continue
        for field in ("type", "description"):
            if field not in opt:
                errors.append(f"{role_name}/meta/argument_specs.yml: {name} has no {field}")
        templated = isinstance(defaults[name], str) and "{{" in defaults[name]
        if templated and "default" in opt:
            errors.append(f"{role_name}/meta/argument_specs.yml: {name} repeats a templated default")
        if not templated and opt.get("default") != defaults[name]:
            errors.append(f"{role_name}/meta/argument_specs.yml: {name} default {opt.get('default')!r} "
                          f"!= defaults/main.yml {defaults[name]!r}")

    used = set()
    for path in role.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".j2") and "defaults" not in path.parts:
            for m in re.finditer(r"(?<![_\w])" + prefix + r"[a-z0-9_]+", path.read_text()):
                used.add((m.group(0), path.relative_to(role)))
    for name, path in sorted(used):
        if name not in defaults:
            errors.append(f"{role_name}/{path}: uses {name}, which defaults/main.yml does not define")

role = root / "ansible" / "roles" / "chatd"
template = (role / "templates" / "chatd.toml.j2").read_text()
rendered_keys = set(re.findall(r"^([a-z_]+) = ", template, re.M))
documented = set(re.findall(r"^#? ?([a-z_]+) = ", (root / "config" / "chatd.toml").read_text(), re.M))
config_rs = (root / "src" / "config.rs").read_text()
fields = set()
for struct in ("FileConfig", "FileChatConfig"):
    body = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", config_rs, re.S).group(1)
    fields |= set(re.findall(r"pub ([a-z_]+): Option<", body))
rendered_tables = set(re.findall(r"^\[([a-z_]+)\]", template, re.M))
for key in sorted((documented | fields) - rendered_tables - rendered_keys):
    errors.append(f"templates/chatd.toml.j2: does not render the key {key}")

if errors:
    print("\n".join("check_specs: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print("check_specs: " + ", ".join(f"{r} {n} variables" for r, n in counts.items())
      + f", all in argument_specs.yml with matching defaults; chatd's template renders all {len(rendered_keys)} config keys")
