"""Loading plugins' prebuilt C kernel libraries, and the argument checks every native entry point runs.

Plugins compile their kernels when their wheel is built (:mod:`qcore.build`), into a plain C shared
library inside the package; nothing is compiled at run time. A plugin finds and opens it with::

    lib = native.load_library("qcore_bnb", "_kernels", {"qcbnb_lut4_gemm": (None, ctypes.c_void_p, ...)})

which returns ``None`` (and warns once, saying why and what runs instead) when the binary is missing
or ``QCORE_NATIVE=0``. Before a pointer reaches C, the caller checks every tensor with
:func:`check_tensor`: device, dtype, contiguity and exact shape, so the byte size the C code reads
is the byte size the tensor owns. A violation raises :class:`KernelArgumentError`, never a crash.

Threads: the kernels' OpenMP regions share the ``libgomp`` torch has loaded and take their thread
count from ``torch.get_num_threads()`` (:func:`num_threads`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import os
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from qcore.errors import QcoreError

_lock = threading.Lock()
_loaded: dict[tuple[str, str], ctypes.CDLL | None] = {}
_NOT_LOADED = object()
SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


class KernelArgumentError(QcoreError, ValueError):
    """A tensor handed to a native kernel has the wrong device, dtype, layout or size."""


def enabled() -> bool:
    """False when ``QCORE_NATIVE`` is 0/false/no/off: every plugin then runs its torch path."""
    return os.environ.get("QCORE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def library_path(package: str, stem: str) -> Path | None:
    """The built library ``<package>/<stem>*.so`` (any platform suffix), or None when the package has none."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob(f"{stem}*")):
            if path.suffix in SUFFIXES and path.is_file():
                return path
    return None


def load_library(package: str, stem: str, signatures: dict[str, tuple] | Callable[[], dict[str, tuple]],
                 what_instead: str = "torch kernels") -> ctypes.CDLL | None:
    """Open a plugin's prebuilt kernel library once per process.

    :param package: the plugin package that holds the binary, e.g. ``"qcore_bnb"``.
    :param stem: the file name before the platform suffix, e.g. ``"_kernels"``.
    :param signatures: ``{function: (restype, *argtypes)}`` set on the loaded library, or a function
        returning it (called on the first load only: ops call this on every use).
    :param what_instead: named in the warning when there is no binary.
    :returns: the library, or ``None`` (one warning per process) when missing, unloadable or switched off.
    """
    key = (package, stem)
    lib = _loaded.get(key, _NOT_LOADED)  # the hot path: no lock once loaded
    if lib is not _NOT_LOADED:
        return lib
    if callable(signatures):
        signatures = signatures()
    with _lock:
        if key in _loaded:
            return _loaded[key]
        lib = None
        if enabled():
            path = library_path(package, stem)
            if path is None:
                warnings.warn(f"qcore: {package} has no compiled kernels ({stem}*.so is missing: the package was "
                              f"installed without a C compiler); using its {what_instead}, which are slower. "
                              f"Reinstall it with a C compiler present (gcc/clang) to build them.",
                              RuntimeWarning, stacklevel=3)
            else:
                try:
                    lib = ctypes.CDLL(str(path))
                    for fn, (restype, *argtypes) in signatures.items():
                        func = getattr(lib, fn)
                        func.restype, func.argtypes = restype, argtypes
                except (OSError, AttributeError) as exc:
                    lib = None
                    warnings.warn(f"qcore: could not load {path} ({exc}); using {package}'s {what_instead}, which "
                                  "are slower. Reinstall the package to rebuild it.", RuntimeWarning, stacklevel=3)
        _loaded[key] = lib
        return lib


def check_tensor(op: str, name: str, t: object, dtype: torch.dtype | Sequence[torch.dtype],
                 shape: Sequence[int]) -> torch.Tensor:
    """Raise :class:`KernelArgumentError` unless ``t`` is a contiguous CPU tensor of ``dtype`` and exactly ``shape``.

    This is what makes a pointer safe to hand to C: a contiguous tensor of this shape and dtype owns
    ``prod(shape) * itemsize`` bytes from ``data_ptr()``. The caller keeps ``t`` alive across the call.
    """
    # the common case first, in the cheapest calls (this runs several times per layer per token)
    if (isinstance(t, torch.Tensor) and t.is_cpu and (t.dtype is dtype if isinstance(dtype, torch.dtype) else t.dtype in dtype)
            and t.shape == tuple(shape) and t.is_contiguous()
            and t.untyped_storage().nbytes() >= (t.storage_offset() + t.numel()) * t.element_size()):
        return t
    if not isinstance(t, torch.Tensor):
        raise KernelArgumentError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    if t.device.type != "cpu":
        raise KernelArgumentError(f"{op}: {name} is on {t.device}; this kernel runs on CPU tensors only")
    if t.dtype not in dtypes:
        raise KernelArgumentError(f"{op}: {name} is {t.dtype}, expected {' or '.join(map(str, dtypes))}")
    if tuple(t.shape) != tuple(int(s) for s in shape):
        raise KernelArgumentError(f"{op}: {name} has shape {list(t.shape)}, expected {list(shape)}")
    if not t.is_contiguous():
        raise KernelArgumentError(f"{op}: {name} is not contiguous (strides {t.stride()}); pass .contiguous()")
    if t.numel() and t.untyped_storage().nbytes() < (t.storage_offset() + t.numel()) * t.element_size():
        raise KernelArgumentError(f"{op}: {name}'s storage is smaller than its shape says")
    return t


def check(op: str, condition: bool, message: str) -> None:
    """Raise :class:`KernelArgumentError` with ``op: message`` unless ``condition``."""
    if not condition:
        raise KernelArgumentError(f"{op}: {message}")


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
    return max(1, torch.get_num_threads())
