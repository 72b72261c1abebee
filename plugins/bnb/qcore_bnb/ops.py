"""qcore-plugin-bnb's CPU kernels as torch ops: ``torch.ops.qcore_bnb.{lut4_gemm, lut4_dequantize, int8_gemm}``.

The C code is qcore's shared lookup kernel (``qcore/lut4.h``) compiled into this package's
``_kernels`` binary when the wheel is built (``setup.py``, ``csrc/qcore_bnb_kernels.c``): bitsandbytes'
NF4/FP4 layout is that kernel's layout. The ops (defined by :func:`qcore.lut4.register_ops`) check
every tensor before a pointer reaches C and run in torch when the binary is missing (one warning).
"""

from __future__ import annotations

import ctypes

from qcore import lut4, native

PREFIX = "qcbnb"


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (warned once) when the package was installed without a C compiler."""
    return native.load_library("qcore_bnb", "_kernels", lambda: lut4.signatures(PREFIX),
                               what_instead="torch kernels (a byte-pair lookup table, about 2x float32 decode time)")


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = library()
    return "torch" if lib is None else lut4.ISA_NAMES[lib.qcbnb_isa()]


IMPL = lut4.register_ops("qcore_bnb", PREFIX, library)
lut4_gemm = IMPL["lut4_gemm"]
lut4_dequantize = IMPL["lut4_dequantize"]
lut4_gemm_q8 = IMPL["lut4_gemm_q8"]
