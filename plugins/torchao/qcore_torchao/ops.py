"""qcore-plugin-torchao's CPU kernels as torch ops: ``torch.ops.qcore_torchao.{lut4_gemm, lut4_gemm_affine,
lut4_gemm_q8, lut4_dequantize, int8_gemm, f32_gemm, fp8_gemv, fp8_dequantize}``.

The C code is qcore's shared lookup and FP8 kernels (``qcore/lut4.h``, ``qcore/fp8.h``) compiled into this
package's ``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_torchao_kernels.c``). The
ops (defined by :func:`qcore.lut4.register_ops` and :func:`qcore.fp8.register_ops`) check every tensor before
a pointer reaches C; without the binary they run their torch definitions and :mod:`qcore.int4` picks torch's
own int4 GEMM where it can (one warning).
"""

from __future__ import annotations

from qcore import fp8, int4

PREFIX = "qctorchao"
NAMESPACE = "qcore_torchao"
OPS = int4.plugin_ops(NAMESPACE, PREFIX, more_signatures=lambda: fp8.signatures(PREFIX))
library = OPS.library  # the compiled kernels, or None (warned once) without a C compiler
FP8_OPS = fp8.register_ops(NAMESPACE, PREFIX, library)  # {"fp8_gemv", "fp8_dequantize"}: the checked calls


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    return int4.isa(OPS, PREFIX)
