"""Helpers for core tests: real installed distributions and subprocesses."""

import sys
from pathlib import Path


def make_dist(site: Path, dist: str, module: str, source: str, entry_name: str | None = None) -> None:
    """A real installed distribution (dist-info + module) with a qcore entry point, on ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[qcore]\n{entry_name or module} = {module}\n")


def run_python(code: str, *, env_extra: dict | None = None, path: Path | None = None, stdin: str = ""):
    import os
    import subprocess

    env = dict(os.environ)
    env.update(env_extra or {})
    if path is not None:
        env["PYTHONPATH"] = str(path) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, input=stdin)


