"""qcore-plugin-bnb's CPU kernels as torch ops: ``torch.ops.qcore_bnb.{lut4_gemm, lut4_gemm_affine, lut4_gemm_q8,
lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_bnb_kernels.c``): bitsandbytes'
NF4/FP4 layout is that kernel's layout. The ops (registered by :func:`qcore.int4.plugin_ops`) check
every tensor before a pointer reaches C and run in torch when the binary is missing (one warning).
"""

from __future__ import annotations

from qcore import int4

PREFIX = "qcbnb"
NAMESPACE = "qcore_bnb"
OPS = int4.plugin_ops(NAMESPACE, PREFIX,
                       what_instead="torch kernels (a byte-pair lookup table, about 2x float32 decode time)")
library = OPS.library  # the compiled kernels, or None (warned once) without a C compiler
lut4_gemm = OPS.impl["lut4_gemm"]
lut4_dequantize = OPS.impl["lut4_dequantize"]
lut4_gemm_q8 = OPS.impl["lut4_gemm_q8"]
int8_gemm = OPS.impl["int8_gemm"]


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    return int4.isa(OPS, PREFIX)
