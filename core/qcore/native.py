"""Native CPU kernels for plugins: C source compiled on first use, cached, loaded with ctypes.

A plugin ships a plain C file (no Python or torch headers) and calls::

    lib = qcore.native.load("qcore_bnb.lut4", source_path, {"qc_lut4_gemm": (ctypes.c_void_p, ...)})

The first call compiles it for this CPU (``-O3 -march=native``, OpenMP when the compiler
has it) into ``$QCORE_CACHE_DIR/kernels/`` (default ``~/.cache/qcore/kernels``), keyed by
the source, the flags and the machine, so later processes load it in milliseconds. It
returns ``None`` (and warns once, saying why) when no C compiler works; plugins then use
their plain-torch path. ``QCORE_NATIVE=0`` turns native kernels off.

Threads: OpenMP regions share the ``libgomp`` that torch has already loaded, and the
kernels take their thread count from ``torch.get_num_threads()``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import types
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}

BASE_FLAGS = ("-O3", "-fPIC", "-shared", "-std=c11", "-fno-math-errno")


def enabled() -> bool:
    return os.environ.get("QCORE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("QCORE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "qcore"
    return base / "kernels"


def compiler() -> str | None:
    """The C compiler: ``$CC``, then the one Python was built with, then cc/gcc/clang on PATH."""
    candidates = [os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"]
    for cand in candidates:
        if cand and shutil.which(cand):
            return cand
    return None


def _compile(cc: str, source: Path, out: Path, flags: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-2000:] or f"{cc} exited with {proc.returncode}")
        os.replace(tmp, out)  # atomic: a concurrent process sees the whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags (a cache shared
    between machines never hands one CPU a library built for another)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return platform.machine() + "|".join(dict.fromkeys(lines))
    except OSError:
        return platform.machine() + platform.processor()


def load(name: str, source: str | os.PathLike, signatures: dict[str, tuple], march: str = "native") -> ctypes.CDLL | None:
    """Compile (once per machine) and load a C kernel library.

    :param name: a unique dotted name, e.g. ``"qcore_bnb.lut4"`` (part of the cache file name).
    :param source: path of the ``.c`` file.
    :param signatures: ``{function: (restype, *argtypes)}`` set on the loaded library.
    :param march: the ``-march`` target; ``"native"`` (this CPU) unless a test builds the
        other SIMD variants (e.g. ``"x86-64-v3"`` for AVX2, ``"x86-64"`` for the portable code).
    :returns: the library, or ``None`` when native kernels are off or cannot be built here.
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        _loaded[name] = lib = _build_and_load(name, Path(source), signatures, march) if enabled() else None
        return lib


def _build_and_load(name: str, source: Path, signatures: dict[str, tuple], march: str) -> ctypes.CDLL | None:
    cc = compiler()
    if cc is None:
        warnings.warn(f"qcore: no C compiler found (set CC or install gcc); {name} uses its plain-torch kernels, "
                      "which are slower", RuntimeWarning, stacklevel=3)
        return None
    text = source.read_bytes()
    attempts = [[*BASE_FLAGS, f"-march={march}", "-fopenmp"], [*BASE_FLAGS, f"-march={march}"]]
    errors = []
    for flags in attempts:
        key = hashlib.sha256(text + " ".join([cc, *flags, _cpu_signature()]).encode()).hexdigest()[:16]
        out = cache_dir() / f"{name}-{key}.so"
        try:
            if not out.exists():
                logger.info("compiling %s with %s", name, cc)
                _compile(cc, source, out, flags)
            lib = ctypes.CDLL(str(out))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            first = next((ln for ln in str(exc).splitlines() if "error" in ln), str(exc).splitlines()[0] if str(exc) else "")
            errors.append(f"[{' '.join(flags)}] {first.strip()}")
            continue
        for fn, (restype, *argtypes) in signatures.items():
            func = getattr(lib, fn)
            func.restype, func.argtypes = restype, argtypes
        return lib
    warnings.warn(f"qcore: could not build the native kernels {name}; using the plain-torch kernels, which are "
                  f"slower. {cc} said: {' / '.join(dict.fromkeys(errors))}", RuntimeWarning, stacklevel=3)
    return None


@functools.cache
def optional_module(name: str) -> types.ModuleType | None:
    """Import ``name`` once, or None when it (or something it imports, e.g. triton) is missing.

    For a plugin's GPU kernel module, imported only when a CUDA tensor needs it.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def num_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())
