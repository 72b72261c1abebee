"""The plugin tutorial (docs/writing-a-plugin.md), assembled verbatim from its code blocks, passes the conformance kit."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import make_dist

ROOT = Path(__file__).resolve().parents[1]


def tutorial_files() -> dict[str, str]:
    """File name -> source, for every ```python block of the tutorial that starts with ``# qcore_mymethod/<file>``."""
    text = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# qcore_mymethod/(\w+\.py)", first.strip())
        if match:
            files[match.group(1)] = block
    return files


def test_the_tutorial_has_every_file():
    assert set(tutorial_files()) == {"config.py", "linear.py", "plugin.py"}


@pytest.mark.slow
def test_the_tutorial_plugin_passes_the_conformance_kit(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "qcore-plugin-mymethod", "qcore_mymethod_entry", "from qcore_mymethod.plugin import *  # noqa: F403\n",
              entry_name="mymethod")
    package = site / "qcore_mymethod"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in tutorial_files().items():
        (package / name).write_text(source)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_tutorial_conformance.py").write_text(
        "from qcore.testing import PluginConformance\n\n\n"
        "class TestTutorial(PluginConformance):\n    preset = 'example-int8'\n    max_relative_error = 0.02\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "QCORE_PLUGINS": "mymethod"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
