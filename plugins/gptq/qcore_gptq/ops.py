"""qcore-plugin-gptq's CPU kernels as torch ops: ``torch.ops.qcore_gptq.{lut4_gemm, lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_gptq_kernels.c``). GPTQ's
4-bit ``s * (q - z)`` runs as that kernel with ``code = 0..15`` and the zero point subtracted
after; 8-bit runs the int8 GEMV. The ops (defined by :func:`qcore.lut4.register_ops`) check every
tensor before a pointer reaches C; without the binary, :mod:`.kernels` uses torch's own int4/int8
CPU kernels instead (one warning).
"""

from __future__ import annotations

import ctypes

from qcore import lut4, native

PREFIX = "qcgptq"


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (warned once) when the package was installed without a C compiler."""
    return native.load_library("qcore_gptq", "_kernels", lambda: lut4.signatures(PREFIX),
                               what_instead="torch int4/int8 kernels (_weight_int4pack_mm_for_cpu, _weight_int8pack_mm)")


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = library()
    return "torch" if lib is None else lut4.ISA_NAMES[lib.qcgptq_isa()]


IMPL = lut4.register_ops("qcore_gptq", PREFIX, library)
lut4_gemm = IMPL["lut4_gemm"]
lut4_dequantize = IMPL["lut4_dequantize"]
lut4_gemm_q8 = IMPL["lut4_gemm_q8"]
int8_gemm = IMPL["int8_gemm"]
