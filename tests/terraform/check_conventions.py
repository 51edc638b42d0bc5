#!/usr/bin/env python3
"""Static checks of terraform/ that need no provider: conventions and wiring.

Run by tests/terraform/run.sh with the python that has python-hcl2 (PyPI). For every Terraform
folder under terraform/ (the roots terraform/ and terraform/aws/, and each of terraform/modules/*):

  layout      main.tf, variables.tf, outputs.tf, versions.tf (roots: also providers.tf and
              terraform.tfvars.example; modules: also README.md and tests/*.tftest.hcl)
  versions    required_version is "~> X.Y"; every provider in required_providers has a source and
              a "~> X.Y" or "~> X.Y.Z" version; every resource and data type (and provider block)
              belongs to a declared provider (terraform_data is built in)
  variables   every variable has a description and a type, and a validation block, except a bool
              declared nullable = false (true/false is all it can be); every declared variable is
              used and every var.NAME used is declared
  outputs     every output has a description
  references  every local.NAME used is defined; every module.NAME.OUTPUT names a module call of
              the folder and an output of that module
  modules     every argument of a call to a local module is one of its variables, and every
              variable without a default is given
  tfvars      terraform.tfvars.example sets (or shows in a comment) only declared variables and
              sets every variable that has no default
  secrets     no provider block holds a credential argument; no file holds a private key, an AWS
              access key id or a Hetzner API token

Prints one line per check and a closing "N passed, N failed" line; exits 1 on any failure.
"""

from __future__ import annotations

import pathlib
import re
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
ROOTS = [TF, TF / "aws"]
META_ARGS = {"source", "version", "count", "for_each", "depends_on", "providers"}
CREDENTIAL_ARGS = {"token", "access_key", "secret_key", "password", "session_token"}
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*\n[A-Za-z0-9+/=]{20,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Hetzner API token": re.compile(r"HCLOUD_TOKEN\s*[=:]\s*['\"]?[A-Za-z0-9]{64}\b"),
}

passed: list[str] = []
failed: list[str] = []


def check(ok: bool, what: str) -> None:
    (passed if ok else failed).append(what)
    print(f"  {'ok  ' if ok else 'FAIL'}  {what}")


def unquote(value) -> str:
    """python-hcl2 8 keeps the quotes of string literals: '"abc"' -> 'abc'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def blocks(doc: dict, kind: str) -> dict[str, dict]:
    """Labelled blocks of one kind (variable, output, module...) as {name: body}."""
    out: dict[str, dict] = {}
    for entry in doc.get(kind, []):
        for name, body in entry.items():
            if name.startswith("__"):
                continue
            out[unquote(name)] = body
    return out


def typed_blocks(doc: dict, kind: str) -> list[tuple[str, str]]:
    """Blocks with two labels (resource, data) as [(type, name)]."""
    out = []
    for entry in doc.get(kind, []):
        for rtype, named in entry.items():
            if rtype.startswith("__"):
                continue
            for name in named:
                if not name.startswith("__"):
                    out.append((unquote(rtype), unquote(name)))
    return out


class Folder:
    """The .tf files of one folder, parsed and concatenated."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.rel = str(path.relative_to(ROOT))
        self.files = sorted(path.glob("*.tf"))
        self.docs = [hcl2.load(f.open()) for f in self.files]
        self.text = "\n".join(f.read_text() for f in self.files)
        self.variables = self._merge("variable")
        self.outputs = self._merge("output")
        self.modules = self._merge("module")
        self.locals = {k for d in self.docs for entry in d.get("locals", []) for k in entry if not k.startswith("__")}
        self.terraform = [t for d in self.docs for t in d.get("terraform", [])]
        self.resources = [r for d in self.docs for r in typed_blocks(d, "resource")]
        self.data = [r for d in self.docs for r in typed_blocks(d, "data")]
        self.providers = [p for d in self.docs for entry in d.get("provider", []) for p in entry.items() if not p[0].startswith("__")]

    def _merge(self, kind: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for d in self.docs:
            out.update(blocks(d, kind))
        return out

    @property
    def is_root(self) -> bool:
        return self.path in ROOTS


def code_only(text: str) -> str:
    """The text without # and // comments (references in comments do not count)."""
    return "\n".join(re.sub(r"(^|\s)(#|//).*$", "", line) for line in text.splitlines())


def check_folder(f: Folder, folders: dict[pathlib.Path, Folder]) -> None:
    print(f"\n--- {f.rel}")
    wanted = ["main.tf", "variables.tf", "outputs.tf", "versions.tf"]
    wanted += ["providers.tf", "terraform.tfvars.example"] if f.is_root else ["README.md"]
    for name in wanted:
        check((f.path / name).is_file(), f"{f.rel}: has {name}")
    if not f.is_root:
        check(bool(list((f.path / "tests").glob("*.tftest.hcl"))), f"{f.rel}: has tests/*.tftest.hcl")

    # versions
    versions = [t.get("required_version") for t in f.terraform if "required_version" in t]
    check(len(versions) == 1 and re.fullmatch(r"~> \d+\.\d+", unquote(versions[0]) or "") is not None,
          f"{f.rel}: required_version pinned as \"~> X.Y\" ({', '.join(map(str, versions)) or 'none'})")
    declared: dict[str, dict] = {}
    for t in f.terraform:
        for rp in t.get("required_providers", []):
            for name, spec in rp.items():
                if not name.startswith("__"):
                    declared[name] = spec
    for name, spec in declared.items():
        source, version = unquote(spec.get("source", "")), unquote(spec.get("version", ""))
        check(bool(re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", source or "")),
              f"{f.rel}: provider {name} has a source ({source or 'none'})")
        check(bool(re.fullmatch(r"~> \d+\.\d+(\.\d+)?", version or "")),
              f"{f.rel}: provider {name} version pinned with ~> and a minor ({version or 'none'})")
    used = {t.split("_")[0] for t, _ in f.resources + f.data if t != "terraform_data"}
    used |= {unquote(name) for name, _ in f.providers}
    for name in sorted(used):
        check(name in declared, f"{f.rel}: provider {name} (used) is in required_providers")

    # variables
    code = code_only(f.text)
    for name, body in f.variables.items():
        desc = unquote(body.get("description", ""))
        check(bool(desc and desc.strip()), f"{f.rel}: variable {name} has a description")
        check("type" in body, f"{f.rel}: variable {name} has a type")
        bool_not_null = body.get("type") == "bool" and body.get("nullable") is False
        check(bool(body.get("validation")) or bool_not_null,
              f"{f.rel}: variable {name} has a validation" + (" (bool, nullable = false)" if bool_not_null else ""))
        check(re.search(rf"\bvar\.{re.escape(name)}\b", code) is not None, f"{f.rel}: variable {name} is used")
    for name in sorted(set(re.findall(r"\bvar\.([A-Za-z_][\w-]*)", code))):
        check(name in f.variables, f"{f.rel}: var.{name} is declared")

    for name, body in f.outputs.items():
        desc = unquote(body.get("description", ""))
        check(bool(desc and desc.strip()), f"{f.rel}: output {name} has a description")

    # references
    for name in sorted(set(re.findall(r"\blocal\.([A-Za-z_][\w-]*)", code))):
        check(name in f.locals, f"{f.rel}: local.{name} is defined")
    for mod, out in sorted(set(re.findall(r"\bmodule\.([A-Za-z_][\w-]*)(?:\[[^\]]*\])?\.([A-Za-z_][\w-]*)", code))):
        target = module_folder(f, mod, folders)
        ok = target is not None and out in target.outputs
        check(ok, f"{f.rel}: module.{mod}.{out} is an output of {target.rel if target else 'an unknown module'}")

    # module calls
    for mod, body in f.modules.items():
        target = module_folder(f, mod, folders)
        check(target is not None, f"{f.rel}: module {mod} has a local source in terraform/")
        if target is None:
            continue
        args = {k for k in body if not k.startswith("__") and k not in META_ARGS}
        for a in sorted(args):
            check(a in target.variables, f"{f.rel}: module {mod} argument {a} is a variable of {target.rel}")
        for v, vbody in target.variables.items():
            if "default" not in vbody:
                check(v in args, f"{f.rel}: module {mod} sets required variable {v}")

    # tfvars example
    example = f.path / "terraform.tfvars.example"
    if f.is_root and example.is_file():
        doc = hcl2.load(example.open())
        set_names = {k for k in doc if not k.startswith("__")}
        shown = set(re.findall(r"^#\s*([a-z_][a-z0-9_]*)\s*=", example.read_text(), re.M))
        for name in sorted(set_names | shown):
            if name.startswith("chatd_") and name not in f.variables:
                continue  # a key inside the chatd_settings map shown commented out
            check(name in f.variables, f"{f.rel}: terraform.tfvars.example's {name} is a declared variable")
        for name, body in f.variables.items():
            if "default" not in body:
                check(name in set_names, f"{f.rel}: terraform.tfvars.example sets required variable {name}")

    # secrets
    for name, body in f.providers:
        creds = sorted(CREDENTIAL_ARGS & set(body))
        check(not creds, f"{f.rel}: provider {unquote(name)} block holds no credential ({', '.join(creds) or 'none'})")


def module_folder(f: Folder, mod: str, folders: dict[pathlib.Path, Folder]) -> Folder | None:
    body = f.modules.get(mod)
    if body is None:
        return None
    source = unquote(body.get("source", ""))
    if not source.startswith("."):
        return None
    return folders.get((f.path / source).resolve())


def main() -> int:
    paths = sorted({p.parent for p in TF.rglob("*.tf") if ".terraform" not in p.parts})
    folders = {p.resolve(): Folder(p) for p in paths}
    for root in ROOTS:
        check(root.resolve() in folders, f"root {root.relative_to(ROOT)} exists")
    for folder in folders.values():
        check_folder(folder, folders)

    print("\n--- secrets in any file under terraform/")
    hits = []
    for path in sorted(TF.rglob("*")):
        if not path.is_file() or ".terraform" in path.parts or ".chatd" in path.parts:
            continue
        text = path.read_text(errors="replace")
        hits += [f"{path.relative_to(ROOT)} ({what})" for what, p in SECRET_PATTERNS.items() if p.search(text)]
    check(not hits, f"no private key, AWS access key id or Hetzner token in terraform/ ({', '.join(hits) or 'none'})")

    print(f"\nconventions: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
