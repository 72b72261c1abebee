"""qcore-plugin-torchao's CPU kernels as torch ops: ``torch.ops.qcore_torchao.{lut4_gemm, lut4_gemm_q8, lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_torchao_kernels.c``). The ops
(defined by :func:`qcore.lut4.register_ops`) check every tensor before a pointer reaches C; without the
binary they run their torch definitions and :mod:`qcore.int4` picks torch's own int4 GEMM where it can (one warning).
"""

from __future__ import annotations

import ctypes

from qcore import int4, lut4, native

PREFIX = "qctorchao"
NAMESPACE = "qcore_torchao"


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (warned once) when the package was installed without a C compiler."""
    return native.load_library(NAMESPACE, "_kernels", lut4.signatures(PREFIX),
                               what_instead="torch int4/int8 kernels (_weight_int4pack_mm_for_cpu, _weight_int8pack_mm)")


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = library()
    return "torch" if lib is None else lut4.ISA_NAMES[getattr(lib, f"{PREFIX}_isa")()]


IMPL = lut4.register_ops(NAMESPACE, PREFIX, library)
OPS = int4.KernelOps(NAMESPACE, IMPL, library)
