"""qcore-plugin-awq's CPU kernels as torch ops: ``torch.ops.qcore_awq.{lut4_gemm, lut4_gemm_q8, lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_awq_kernels.c``). The ops
(defined by :func:`qcore.lut4.register_ops`) check every tensor before a pointer reaches C; without the
binary they run their torch definitions and :mod:`qcore.int4` picks torch's own int4 GEMM where it can (one warning).
"""

from __future__ import annotations

from qcore import int4

PREFIX = "qcawq"
NAMESPACE = "qcore_awq"
OPS = int4.plugin_ops(NAMESPACE, PREFIX)
library = OPS.library  # the compiled kernels, or None (warned once) without a C compiler


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    return int4.isa(OPS, PREFIX)
