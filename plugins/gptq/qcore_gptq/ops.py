"""qcore-plugin-gptq's CPU kernels as torch ops: ``torch.ops.qcore_gptq.{lut4_gemm, lut4_gemm_affine, lut4_gemm_q8,
lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_gptq_kernels.c``). GPTQ's
4-bit ``s * (q - z)`` runs as that kernel with ``code = 0..15`` and the zero-point term in the same
call; 8-bit runs the int8 GEMV. The ops (registered by :func:`qcore.int4.plugin_ops`) check every
tensor before a pointer reaches C; without the binary, :mod:`.kernels` uses torch's own int4/int8
CPU kernels instead (one warning).
"""

from __future__ import annotations

from qcore import int4

PREFIX = "qcgptq"
NAMESPACE = "qcore_gptq"
OPS = int4.plugin_ops(NAMESPACE, PREFIX)
library = OPS.library  # the compiled kernels, or None (warned once) without a C compiler
lut4_gemm = OPS.impl["lut4_gemm"]
lut4_dequantize = OPS.impl["lut4_dequantize"]
lut4_gemm_q8 = OPS.impl["lut4_gemm_q8"]
int8_gemm = OPS.impl["int8_gemm"]


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    return int4.isa(OPS, PREFIX)
