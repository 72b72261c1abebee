"""Builds qcore_hqq/_kernels*.so (plain C, loaded with ctypes) from csrc/ against qcore's kernel headers.

Everything else is in pyproject.toml. qcore's build helper is loaded by file path (from the
installed qcore, else from this source tree), so an isolated build needs neither torch nor qcore.
"""

import importlib.util
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def qcore_build_helper():
    spec = importlib.util.find_spec("qcore")
    candidates = [Path(p) / "build.py" for p in (spec.submodule_search_locations or [])] if spec else []
    candidates += [parent / "core" / "qcore" / "build.py" for parent in HERE.parents]
    for path in candidates:
        if path.is_file():
            module_spec = importlib.util.spec_from_file_location("qcore_build", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    raise RuntimeError("qcore's build helper (qcore/build.py) was not found: install qcore first and build with "
                       "--no-build-isolation, or build from the qcore source tree")


build = qcore_build_helper()
setup(ext_modules=[build.extension("qcore_hqq._kernels", ["csrc/qcore_hqq_kernels.c"])],
      cmdclass={"build_ext": build.BuildExt})
