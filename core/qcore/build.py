"""Build helper for plugins that ship C kernels against qcore's shared headers.

A plugin's ``setup.py`` (run when its wheel is built, never at first use) does::

    from setuptools import setup
    build = <this file, loaded by path: see plugins/bnb/setup.py>
    setup(ext_modules=[build.extension("qcore_bnb._kernels", ["csrc/qcore_bnb_kernels.c"])],
          cmdclass={"build_ext": build.BuildExt})

The result is a plain C shared library (no Python C-API) that :func:`qcore.native.load_library`
opens with ctypes. It holds every SIMD variant (AVX-512 / AVX2 / portable) and picks one at run
time, so one wheel serves every x86-64 CPU; no ``-march=native``. OpenMP comes from ``-fopenmp``:
at run time the library binds to the ``libgomp.so.1`` torch has already loaded. A compiler without
OpenMP gets a single-threaded build and a warning; no compiler at all gets no binary and a
warning, and the plugin falls back to torch at run time.

This module imports only the standard library and setuptools, so it works in an isolated build
environment where neither torch nor qcore is installed: a plugin's setup.py loads it by file path,
from the installed qcore when there is one, else from the source tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADERS = ("simd.h", "lut4.h", "lut4_impl.h", "lut4_q8.h")
COMPILE_ARGS = ["-O3", "-std=c11", "-fno-math-errno", "-fvisibility=hidden", "-Wall"]
OPENMP_ARGS = ["-fopenmp"]


def include_dir() -> str:
    """The directory to pass as ``-I``: it holds ``qcore/simd.h`` and ``qcore/lut4.h``."""
    return str(Path(__file__).resolve().parent / "include")


def compile_args(openmp: bool = True) -> list[str]:
    return [*COMPILE_ARGS, *(OPENMP_ARGS if openmp else [])]


def link_args(openmp: bool = True) -> list[str]:
    return list(OPENMP_ARGS if openmp else [])


def extension(name: str, sources: list[str], **kwargs):
    """A setuptools Extension for a plain C kernel library compiled against qcore's headers.

    ``optional=True``: a machine without a C compiler still installs the plugin (torch fallback at run time).
    """
    from setuptools import Extension

    libraries = [] if sys.platform == "win32" else ["m"]
    return Extension(name, sources=sources, include_dirs=[include_dir()], extra_compile_args=compile_args(),
                     extra_link_args=link_args(), libraries=libraries, depends=[str(Path(include_dir()) / "qcore" / h) for h in HEADERS],
                     optional=kwargs.pop("optional", True), **kwargs)


def _build_ext_class():
    from setuptools.command.build_ext import build_ext

    class BuildExt(build_ext):
        """build_ext that retries without OpenMP (e.g. Apple clang) and says so instead of failing silently."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: retry once without OpenMP
                if not any(a in OPENMP_ARGS for a in ext.extra_compile_args):
                    raise
                print(f"qcore.build: {ext.name} did not build with OpenMP ({exc}); building it single-threaded",
                      file=sys.stderr)
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP_ARGS]
                ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP_ARGS]
                super().build_extension(ext)

    return BuildExt


def __getattr__(name: str):
    if name == "BuildExt":  # setuptools is imported only by a build, never by qcore at run time
        return _build_ext_class()
    raise AttributeError(name)
