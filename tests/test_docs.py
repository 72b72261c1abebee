"""Docs that tests keep honest: every hook documented with its exact arguments, README commands real."""

import inspect
import re
from pathlib import Path

import pytest

from qcore import hookspecs

ROOT = Path(__file__).resolve().parents[1]
SPECS = {name: f for name, f in vars(hookspecs).items() if hasattr(f, "qcore_spec")}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_exact_arguments(name):
    args = ", ".join(inspect.signature(SPECS[name]).parameters)
    assert f"## {name}({args})" in (ROOT / "docs" / "hooks.md").read_text()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_spec_docstring_is_complete(name):
    doc = inspect.getdoc(SPECS[name])
    for param in inspect.signature(SPECS[name]).parameters:
        assert f":param {param}:" in doc, f"{name}: argument {param} undocumented"
    assert ":returns:" in doc
    if SPECS[name].qcore_spec.get("firstresult"):
        assert "first non-None result" in " ".join(doc.split())


def test_documented_hooks_all_exist():
    documented = re.findall(r"^## (\w+)\(", (ROOT / "docs" / "hooks.md").read_text(), flags=re.M)
    assert set(documented) == set(SPECS)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line.split("#")[0].strip() for line in readme.splitlines() if line.rstrip().endswith("# the tests: lint, core, each plugin alone, everything together"))
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_tox_env_in_the_readme_exists():
    tox = (ROOT / "tox.ini").read_text()
    for env in re.findall(r"tox -e (\w+)", (ROOT / "README.md").read_text()):
        assert f"[testenv:{env}]" in tox


def test_relative_links_in_docs_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_hook_reference_is_generated_from_the_specs():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_hooks_doc.py"), "--check"], capture_output=True)
    assert result.returncode == 0, "docs/hooks.md is stale: run python tools/gen_hooks_doc.py"
